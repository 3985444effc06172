"""The annotation server on a free port in a thread, and a small HTTP client for it."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from splml.annotate.items import AnnotationItems
from splml.annotate.server import AnnotationServer
from splml.annotate.session import AnnotationSession
from splml.io.label_files import AnnotationLog

ANIMALS = ("cat", "dog", "bird", "fish", "cow")


def fake_items(n: int = 4, classes: tuple[str, ...] = ANIMALS) -> AnnotationItems:
    """``n`` small images ``img0``... with a distinct colour each."""
    return AnnotationItems(
        ids=tuple(f"img{i}" for i in range(n)),
        class_names=classes,
        description="test images",
        render=lambda i: Image.new("RGB", (30, 20), (40 * i % 256, 90, 160)),
    )


class Page:
    """Requests as the page (or anything else on this machine) would send them."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def get(self, path: str) -> tuple[int, bytes]:
        status, _, body = self.request("GET", path)
        return status, body

    def state(self) -> dict[str, Any]:
        status, body = self.get("/api/state")
        assert status == 200, body
        return json.loads(body)

    def post(self, path: str, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        status, _, body = self.request(
            "POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}
        )
        return status, json.loads(body)

    def answer(self, image_id: str | None, class_name: Any, seconds: Any = 1.5) -> tuple[int, dict[str, Any]]:
        return self.post("/api/answer", {"id": image_id, "class": class_name, "seconds": seconds})

    def skip(self, image_id: str | None, seconds: float = 0.5) -> tuple[int, dict[str, Any]]:
        return self.post("/api/skip", {"id": image_id, "seconds": seconds})

    def back(self, image_id: str | None) -> tuple[int, dict[str, Any]]:
        return self.post("/api/back", {"id": image_id})


@contextmanager
def serving(items: AnnotationItems, out: Path, annotator: str = "tester", order_seed: int = 0) -> Iterator[Page]:
    """A real server on 127.0.0.1 and a free port, stopped (and the file unlocked) on exit."""
    annotations = AnnotationLog(out, items.ids, items.class_names)
    server = AnnotationServer(AnnotationSession(items, annotations, annotator, order_seed=order_seed), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Page(server.port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        annotations.close()


def rows(path: Path) -> list[list[str]]:
    import csv

    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))

"""The annotation server on a free port in a thread, and a small HTTP client for it."""

from __future__ import annotations

import csv
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


def fake_items(n: int = 4, classes: tuple[str, ...] = ANIMALS, broken: tuple[int, ...] = ()) -> AnnotationItems:
    """``n`` small images ``img0``... with a distinct colour each; those at ``broken`` cannot be decoded."""

    def render(i, view):
        if i in broken:
            raise OSError(f"/data/images/img{i}.jpg: cannot identify image file")
        return Image.new("RGB", (30, 20), (40 * i % 256, 90, 160))

    return AnnotationItems(
        ids=tuple(f"img{i}" for i in range(n)), class_names=classes, description="test images", render=render
    )


class Page:
    """Requests as one tab of the page (or anything else on this machine) would send them.

    Like a tab, it remembers the display token of the last state it received and sends it
    with every action.
    """

    def __init__(self, port: int, token: str | None = None) -> None:
        self.port = port
        self.display: str | None = None
        self.cookie = None if token is None else f"splml_annotate_{port}={token}"

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = dict(headers or {})
        if self.cookie is not None:
            headers.setdefault("Cookie", self.cookie)
        try:
            connection.request(method, path, body=body, headers=headers)
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
        state = json.loads(body)
        self.display = state["display"]
        return state

    def post(self, path: str, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        if isinstance(payload, dict) and "display" not in payload:
            if self.display is None:
                self.state()
            payload = {**payload, "display": self.display}
        status, _, body = self.request(
            "POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}
        )
        reply = json.loads(body)
        state = reply if status == 200 else reply.get("state")
        if state is not None:
            self.display = state["display"]
        return status, reply

    def answer(self, image_id: str | None, class_name: Any, seconds: Any = 1.5) -> tuple[int, dict[str, Any]]:
        return self.post("/api/answer", {"id": image_id, "class": class_name, "seconds": seconds})

    def skip(self, image_id: str | None, seconds: float = 0.5) -> tuple[int, dict[str, Any]]:
        return self.post("/api/skip", {"id": image_id, "seconds": seconds})

    def none(self, image_id: str | None, seconds: float = 0.5) -> tuple[int, dict[str, Any]]:
        return self.post("/api/none", {"id": image_id, "seconds": seconds})

    def flag(self, image_id: str | None, note: Any, seconds: float = 0.5) -> tuple[int, dict[str, Any]]:
        return self.post("/api/flag", {"id": image_id, "note": note, "seconds": seconds})

    def back(self, image_id: str | None) -> tuple[int, dict[str, Any]]:
        return self.post("/api/back", {"id": image_id})

    def undo(self, image_id: str | None) -> tuple[int, dict[str, Any]]:
        return self.post("/api/undo", {"id": image_id})

    def goto(self, image_id: str | None, target: Any) -> tuple[int, dict[str, Any]]:
        return self.post("/api/goto", {"id": image_id, "target": target})

    def review(self, image_id: str | None, class_name: Any) -> tuple[int, dict[str, Any]]:
        return self.post("/api/review", {"id": image_id, "class": class_name})


@contextmanager
def serving(
    items: AnnotationItems, out: Path, annotator: str = "tester", order_seed: int = 0, **server_options: Any
) -> Iterator[Page]:
    """A real server on 127.0.0.1 and a free port, stopped (and the file unlocked) on exit."""
    annotations = AnnotationLog(out, items.ids, items.class_names)
    session_options = {k: server_options.pop(k) for k in ("shard", "min_view_ms") if k in server_options}
    session = AnnotationSession(items, annotations, annotator, order_seed=order_seed, **session_options)
    host = server_options.pop("host", "127.0.0.1")
    server = AnnotationServer(session, host, 0, **server_options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page = Page(server.port, server.token)
        page.server = server
        yield page
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        annotations.close()


def rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))

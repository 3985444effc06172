"""The local web server of the annotation page (standard library only).

Routes, and nothing else (any other path is 404; there is no directory listing and no path
from a request ever reaches the file system):

* ``GET /``, ``/app.js``, ``/style.css``: the page, read from the package once at start;
* ``GET /api/state``: what the page shows (JSON);
* ``GET /image/<index>.png``, ``/map/<index>.png``: the image / reference map of the item at
  that position of the dataset's list (an index outside the list is 404);
* ``POST /api/answer`` ``{"id", "class", "seconds"}``, ``/api/skip`` ``{"id", "seconds"}``,
  ``/api/back`` ``{"id"}``: the actions, answered with the new state once the row is on disk.

Requests must carry a JSON body of at most :data:`MAX_BODY` bytes with ``Content-Type:
application/json`` (so another web site cannot post to the page from the annotator's browser
without a CORS preflight, which is never granted); a POST whose ``Origin`` is not the page's
own is refused, and on a loopback address the ``Host`` header must name the loopback address
(a guard against DNS rebinding).
"""

from __future__ import annotations

import functools
import io
import ipaddress
import json
import logging
import re
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from splml.annotate.items import AnnotationItems
from splml.annotate.session import AnnotationSession, BadRequest, Conflict

log = logging.getLogger(__name__)

#: Largest request body accepted (an answer is well under 1 kB).
MAX_BODY = 4096
#: The page's files: URL path -> (file in splml/annotate/static, content type).
STATIC_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
_PICTURE = re.compile(r"/(image|map)/(\d{1,9})\.png")
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Pictures:
    """PNG bytes of the images and maps, rendered on demand at ``display_size`` and cached.

    Small images (a 120 px reBEN patch) are enlarged by a whole factor with nearest neighbours
    so pixels stay sharp; large ones are reduced to fit. Rendering is serialised: dataset
    readers (LMDB handles, PIL) are not promised to be thread-safe.
    """

    def __init__(self, items: AnnotationItems, display_size: int = 600, cache: int = 64) -> None:
        self.items = items
        self.display_size = int(display_size)
        if self.display_size < 16:
            raise ValueError(f"display_size must be at least 16 px, got {display_size}")
        self._lock = threading.Lock()
        self.png = functools.lru_cache(maxsize=cache)(self._png)

    def _png(self, kind: str, index: int) -> bytes:
        with self._lock:
            picture = self.items.render(index) if kind == "image" else self.items.render_map(index)
        longest = max(picture.size)
        if longest < self.display_size:
            factor = self.display_size // longest
            if factor > 1:
                picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
        elif longest > self.display_size:
            scale = self.display_size / longest
            size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
            picture = picture.resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue()


class AnnotationServer(ThreadingHTTPServer):
    """A threading HTTP server bound to ``(host, port)`` serving one :class:`AnnotationSession`."""

    daemon_threads = True

    def __init__(self, session: AnnotationSession, host: str = "127.0.0.1", port: int = 0, display_size: int = 600):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.session = session
        self.pictures = Pictures(session.items, display_size)
        package = resources.files("splml.annotate") / "static"
        self.static = {path: ((package / name).read_bytes(), kind) for path, (name, kind) in STATIC_FILES.items()}
        super().__init__((host, int(port)), _Handler)
        self.host = host
        self.port = int(self.server_address[1])
        # Host names a browser on this machine uses for the page; others are refused on loopback.
        self.allowed_hosts: set[str] | None = (
            {f"{name}:{self.port}" for name in ("127.0.0.1", "localhost", "[::1]")} if is_loopback(host) else None
        )

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}/"


class _Handler(BaseHTTPRequestHandler):
    server: AnnotationServer
    server_version = "splml-annotate"
    sys_version = ""

    # -- plumbing ----------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, *, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        for name, value in _SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode("utf-8"), "application/json")

    def _error(self, status: int, message: str, **extra: Any) -> None:
        self._json(status, {"error": message, **extra})

    def _host_allowed(self) -> bool:
        allowed = self.server.allowed_hosts
        if allowed is not None and self.headers.get("Host", "") not in allowed:
            self._error(HTTPStatus.FORBIDDEN, "unexpected Host header: open the page at " + self.server.url)
            return False
        return True

    # -- GET ---------------------------------------------------------------------------------
    def do_GET(self) -> None:
        if not self._host_allowed():
            return
        path = urlsplit(self.path).path
        if path in self.server.static:
            body, kind = self.server.static[path]
            self._send(HTTPStatus.OK, body, kind)
        elif path == "/api/state":
            self._json(HTTPStatus.OK, self.server.session.state())
        elif (match := _PICTURE.fullmatch(path)) is not None:
            self._picture(match.group(1), int(match.group(2)))
        else:
            self._error(HTTPStatus.NOT_FOUND, "not found")

    def _picture(self, kind: str, index: int) -> None:
        items = self.server.session.items
        if index >= len(items) or (kind == "map" and not items.has_maps):
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        try:
            body = self.server.pictures.png(kind, index)
        except Exception as exc:  # a broken file must show up on the page, naming the image
            log.exception("cannot render %s %d (%s)", kind, index, items.ids[index])
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot render {items.ids[index]}: {exc}")
            return
        self._send(HTTPStatus.OK, body, "image/png", cache=True)

    # -- POST --------------------------------------------------------------------------------
    def do_POST(self) -> None:
        if not self._host_allowed():
            return
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
            self._error(HTTPStatus.FORBIDDEN, f"requests from {origin} are not accepted")
            return
        action = {"/api/answer": self._answer, "/api/skip": self._skip, "/api/back": self._back}.get(
            urlsplit(self.path).path
        )
        if action is None:
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        body = self._read_body()
        if body is None:
            return
        session = self.server.session
        try:
            state = action(body)
        except BadRequest as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except Conflict as exc:
            self._error(HTTPStatus.CONFLICT, str(exc), state=session.state())
        except OSError as exc:
            log.exception("could not write %s", session.log.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"could not save the answer to {session.log.path}: {exc}")
        else:
            self._json(HTTPStatus.OK, state)

    def _read_body(self) -> dict[str, Any] | None:
        self.close_connection = True  # a refused body is not read: the connection cannot be reused
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
            return None
        if int(length) > MAX_BODY:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY} bytes")
            return None
        if self.headers.get_content_type() != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "the body must be application/json")
            return None
        try:
            body = json.loads(self.rfile.read(int(length)))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {exc}")
            return None
        if not isinstance(body, dict):
            self._error(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
            return None
        return body

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.server.session.answer(body.get("id"), body.get("class"), body.get("seconds"))

    def _skip(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.server.session.skip(body.get("id"), body.get("seconds"))

    def _back(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.server.session.back(body.get("id"))

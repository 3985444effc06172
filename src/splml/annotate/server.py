"""The local web server of the annotation page (standard library only).

Routes, and nothing else (any other path is 404; there is no directory listing and no path
from a request ever reaches the file system):

* ``GET /``, ``/app.js``, ``/style.css``: the page, read from the package once at start;
* ``GET /api/state``: what the page shows (JSON);
* ``GET /image/<index>.png``, ``/map/<index>.png``, ``/thumb/<index>.png``: the image, the
  reference map or a thumbnail of the item at that position of the list (an index outside the
  list is 404); images take ``?composite=<name>&stretch=<low>-<high>|off`` (the page's band and
  contrast choice; anything not offered is 400). An image that cannot be rendered is a 500 whose
  JSON ``error`` names the image and the file;
* ``POST /api/<action>`` with ``{"id", "display", ...}``: answer (``class``, ``seconds``), skip
  (``seconds``), none (``seconds``), flag (``note``, ``seconds``), undo, back, goto
  (``target``), review (``class``), answered with the new state once the row is on disk.

Robustness: requests must carry a JSON body of at most :data:`MAX_BODY` bytes with
``Content-Type: application/json``; a malformed request (body, number, nesting, header) is a
400 with a message, never a dropped connection, and an error in a handler is a 500 that names
it. Each connection has a socket timeout (a stalled client is dropped) and at most
``max_connections`` are served at once (beyond that: 503 at once).

Security: ``application/json`` means another web site cannot post to the page from the
annotator's browser without a CORS preflight, which is never granted; a POST whose ``Origin``
is not the page's own, or that the browser marks as cross-site (``Sec-Fetch-Site``), is refused.
On a loopback address the ``Host`` header must name the loopback address (a guard against DNS
rebinding). On any other address every request needs the random access token printed in the
URL: ``?token=`` once, which sets a cookie for this host and port (``HttpOnly``,
``SameSite=Strict``) and redirects to the page; a page of another site, even one whose name
resolves to this machine, has neither.
"""

from __future__ import annotations

import functools
import hmac
import io
import ipaddress
import json
import logging
import re
import secrets
import socket
import sys
import threading
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from splml.annotate.items import AnnotationItems, View
from splml.annotate.session import AnnotationSession, BadRequest, Conflict

log = logging.getLogger(__name__)

#: Largest request body accepted (an answer is well under 1 kB).
MAX_BODY = 4096
#: Long side of a history thumbnail, in pixels.
THUMB_SIZE = 96
#: The page's files: URL path -> (file in splml/annotate/static, content type).
STATIC_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
_PICTURE = re.compile(r"/(image|map|thumb)/(\d{1,9})\.png")
_DIGITS = re.compile(r"[0-9]{1,9}")
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
    """PNG bytes of the images, maps and thumbnails, rendered on demand and cached.

    Small images (a 120 px reBEN patch) are enlarged by a whole factor with nearest neighbours
    so pixels stay sharp; large ones are reduced to fit. Rendering is serialised: dataset
    readers (LMDB handles, PIL) are not promised to be thread-safe. An image that fails to
    render is remembered with its error, so that the page and the session can say so.
    """

    def __init__(self, items: AnnotationItems, display_size: int = 600, cache: int = 64) -> None:
        self.items = items
        self.display_size = int(display_size)
        if self.display_size < 16:
            raise ValueError(f"display_size must be at least 16 px, got {display_size}")
        self._lock = threading.Lock()
        self.failures: dict[int, str] = {}
        self.png = functools.lru_cache(maxsize=cache)(self._png)

    def _png(self, kind: str, index: int, view: View | None = None) -> bytes:
        with self._lock:
            try:
                picture = self.items.render_map(index) if kind == "map" else self.items.picture(index, view)
            except Exception as exc:
                if kind != "map" and view is None:
                    self.failures[index] = f"{self.items.ids[index]} cannot be shown: {exc}"
                raise
        picture = _fit(picture, THUMB_SIZE if kind == "thumb" else self.display_size)
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue()

    def problem(self, index: int) -> str | None:
        """Why item ``index`` cannot be shown as the page shows it by default, or None."""
        try:
            self.png("image", index, None)
        except Exception:  # noqa: BLE001 -- whatever the reader raises, the image cannot be shown (recorded by _png)
            return self.failures.get(index, f"{self.items.ids[index]} cannot be shown")
        return None


def _fit(picture: Image.Image, size: int) -> Image.Image:
    longest = max(picture.size)
    if longest < size:
        factor = size // longest
        if factor > 1:
            return picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    elif longest > size:
        scale = size / longest
        shape = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        return picture.resize(shape, Image.Resampling.LANCZOS)
    return picture


class AnnotationServer(ThreadingHTTPServer):
    """A threading HTTP server bound to ``(host, port)`` serving one :class:`AnnotationSession`.

    ``token``: the access token every request must carry; ``"auto"`` draws one on a
    non-loopback host (none on loopback), None never asks for one. ``request_timeout``: seconds
    a connection may stay silent; ``max_connections``: connections served at once.
    """

    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        session: AnnotationSession,
        host: str = "127.0.0.1",
        port: int = 0,
        display_size: int = 600,
        *,
        token: str | None = "auto",
        request_timeout: float = 20.0,
        max_connections: int = 32,
    ):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.session = session
        self.pictures = Pictures(session.items, display_size)
        session.image_problem = self.pictures.problem
        session.known_problem = self.pictures.failures.get
        package = resources.files("splml.annotate") / "static"
        self.static = {path: ((package / name).read_bytes(), kind) for path, (name, kind) in STATIC_FILES.items()}
        self.request_timeout = float(request_timeout)
        self._slots = threading.BoundedSemaphore(int(max_connections))
        super().__init__((host, int(port)), _Handler)
        self.host = host
        self.port = int(self.server_address[1])
        self.token = secrets.token_urlsafe(18) if token == "auto" and not is_loopback(host) else (
            None if token == "auto" else token)  # fmt: skip
        self.cookie_name = f"splml_annotate_{self.port}"
        # Host names a browser on this machine uses for the page; others are refused on loopback.
        self.allowed_hosts: set[str] | None = (
            {f"{name}:{self.port}" for name in ("127.0.0.1", "localhost", "[::1]")} if is_loopback(host) else None
        )

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    # -- bounded threads ---------------------------------------------------------------------
    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
                                b"Connection: close\r\n\r\n")  # fmt: skip
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error: %s", client_address, sys.exc_info()[1])


class _Handler(BaseHTTPRequestHandler):
    server: AnnotationServer
    server_version = "splml-annotate"
    sys_version = ""
    default_request_version = "HTTP/1.0"  # errors about an unreadable request line still get a status line

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # read by StreamRequestHandler.setup: a socket timeout
        super().setup()

    # -- plumbing ----------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, *, cache: bool = False,
              headers: dict[str, str] | None = None) -> None:  # fmt: skip
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=3600" if cache else "no-store")
        for name, value in {**_SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self._responded = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The library's own refusals (bad request line, oversized headers, unknown method) as JSON too."""
        self.close_connection = True
        self._error(code, message or self.responses.get(code, ("error",))[0])

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode("utf-8"), "application/json")

    def _error(self, status: int, message: str, **extra: Any) -> None:
        self._json(status, {"error": message, **extra})

    def _guarded(self, handler: Any) -> None:
        """Run ``handler``; whatever goes wrong becomes a response with a message (or a closed socket)."""
        self._responded = False
        try:
            handler()
        except TimeoutError:
            self.close_connection = True  # the client stopped sending: nothing to answer
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:
            log.exception("%s %s failed", self.command, self.path)
            self.close_connection = True
            if not self._responded:
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"the server failed on this request: {exc!r}")

    def _allowed(self) -> bool:
        """The Host check (loopback) and the access token (other hosts); answers when refused."""
        allowed = self.server.allowed_hosts
        if allowed is not None and self.headers.get("Host", "") not in allowed:
            self._error(HTTPStatus.FORBIDDEN, "unexpected Host header: open the page at " + self.server.url)
            return False
        token = self.server.token
        if token is None:
            return True
        split = urlsplit(self.path)
        given = parse_qs(split.query).get("token", [""])[0]
        if given and hmac.compare_digest(given.encode(), token.encode()):
            if self.command == "GET":  # keep the token in a cookie and drop it from the address bar
                cookie = f"{self.server.cookie_name}={token}; Path=/; HttpOnly; SameSite=Strict"
                self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", headers={"Location": split.path or "/",
                                                                           "Set-Cookie": cookie})  # fmt: skip
                return False
            return True
        try:
            cookies = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            cookies = SimpleCookie()
        morsel = cookies.get(self.server.cookie_name)
        if morsel is not None and hmac.compare_digest(morsel.value.encode(), token.encode()):
            return True
        self.close_connection = True
        self._error(HTTPStatus.UNAUTHORIZED, "this annotation server needs its access token: open the address that "
                                             "splml.annotate printed (it ends in ?token=...)")  # fmt: skip
        return False

    # -- GET ---------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._guarded(self._get)

    def _get(self) -> None:
        if not self._allowed():
            return
        split = urlsplit(self.path)
        path = split.path
        if path in self.server.static:
            body, kind = self.server.static[path]
            self._send(HTTPStatus.OK, body, kind)
        elif path == "/api/state":
            self._json(HTTPStatus.OK, self.server.session.state())
        elif (match := _PICTURE.fullmatch(path)) is not None:
            self._picture(match.group(1), int(match.group(2)), parse_qs(split.query))
        else:
            self._error(HTTPStatus.NOT_FOUND, "not found")

    def _picture(self, kind: str, index: int, query: dict[str, list[str]]) -> None:
        items = self.server.session.items
        if index >= len(items) or (kind == "map" and not items.has_maps):
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        try:
            view = items.view(query.get("composite", [None])[0], query.get("stretch", [None])[0])
        except ValueError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        try:
            body = self.server.pictures.png(kind, index, None if view == items.default_view else view)
        except Exception as exc:  # noqa: BLE001 -- a broken file must show up on the page, naming the image and the file
            log.warning("cannot render %s %d (%s): %s", kind, index, items.ids[index], exc)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{items.ids[index]} cannot be shown: {exc}")
            return
        self._send(HTTPStatus.OK, body, "image/png", cache=True)

    # -- POST --------------------------------------------------------------------------------
    def do_POST(self) -> None:
        self._guarded(self._post)

    def _post(self) -> None:
        self.close_connection = True  # a refused body is not read: the connection cannot be reused
        if not self._allowed():
            return
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
            self._error(HTTPStatus.FORBIDDEN, f"requests from {origin} are not accepted")
            return
        if self.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            self._error(HTTPStatus.FORBIDDEN, "cross-site requests are not accepted")
            return
        action = _ACTIONS.get(urlsplit(self.path).path)
        if action is None:
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        body = self._read_body()
        if body is None:
            return
        session = self.server.session
        try:
            state = action(session, body)
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
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") is not None:
            self._error(HTTPStatus.BAD_REQUEST, "Transfer-Encoding is not accepted: send a Content-Length")
            return None
        if len(lengths) != 1 or not _DIGITS.fullmatch(lengths[0].strip()):
            self._error(HTTPStatus.BAD_REQUEST, "one Content-Length header of at most 9 digits is required")
            return None
        length = int(lengths[0])
        if length > MAX_BODY:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY} bytes")
            return None
        if self.headers.get_content_type() != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "the body must be application/json")
            return None
        raw = self.rfile.read(length)
        if len(raw) != length:
            self._error(HTTPStatus.BAD_REQUEST, f"the body ended after {len(raw)} of {length} bytes")
            return None
        try:
            body = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, digit limit
            self._error(HTTPStatus.BAD_REQUEST, f"the body is not JSON this server accepts: {str(exc)[:200]}")
            return None
        if not isinstance(body, dict):
            self._error(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
            return None
        return body


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


_ACTIONS = {
    "/api/answer": lambda s, b: s.answer(b.get("id"), b.get("display"), b.get("class"), b.get("seconds")),
    "/api/skip": lambda s, b: s.skip(b.get("id"), b.get("display"), b.get("seconds")),
    "/api/none": lambda s, b: s.none_of_these(b.get("id"), b.get("display"), b.get("seconds")),
    "/api/flag": lambda s, b: s.flag(b.get("id"), b.get("display"), b.get("note"), b.get("seconds")),
    "/api/undo": lambda s, b: s.undo(b.get("id"), b.get("display")),
    "/api/back": lambda s, b: s.back(b.get("id"), b.get("display")),
    "/api/goto": lambda s, b: s.goto(b.get("id"), b.get("display"), b.get("target")),
    "/api/review": lambda s, b: s.review(b.get("id"), b.get("display"), b.get("class")),
}

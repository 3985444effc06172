"""The annotation server under malformed, slow, numerous and foreign requests."""

from __future__ import annotations

import json
import socket
import time

import pytest

from .annotate_support import Page, fake_items, rows, serving


def _raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` as it is and return everything the server answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _post(port: int, body: bytes, headers: str = "") -> tuple[int, dict]:
    head = (f"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"{headers}\r\n").encode()  # fmt: skip
    reply = _raw(port, head + body)
    status = int(reply.split(b" ", 2)[1])
    payload = reply.split(b"\r\n\r\n", 1)[1]
    return status, json.loads(payload) if payload else {}


def _answer_body(page: Page, seconds: str = "1") -> bytes:
    display = page.state()["display"]
    return f'{{"id": "img0", "display": "{display}", "class": "cat", "seconds": {seconds}}}'.encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"id": "img0", "display": "D", "class": "cat", "seconds": ' + b"9" * 401 + b"}", "reasonable size"),
        (b'{"id": "img0", "display": "D", "class": "cat", "seconds": ' + b"9" * 3900 + b"}", "reasonable size"),
        (b"[" * 4000, "not JSON"),  # nested deeper than the parser's recursion
        (b"[" * 500 + b"]" * 500, "must be a JSON object"),
        (b'{"id": "img0", "display": "D", "class": "cat", "seconds": NaN}', "not JSON"),
        (b'{"id": "img0", "display": "D", "class": "cat", "seconds": 1e999}', "seconds must be a number"),
        (b'{"id": "img0", "display": "D", "class": "cat", "seconds": Infinity}', "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b'"just a string"', "must be a JSON object"),
        (b'{"id": {"deep": [1, 2]}, "display": "D", "class": "cat", "seconds": 1}', "id must be an image id"),
    ],
)
def test_malformed_bodies_are_400_with_a_message(tmp_path, body, message):
    out = tmp_path / "a.csv"
    with serving(fake_items(), out) as page:
        body = body.replace(b'"D"', json.dumps(page.state()["display"]).encode())
        status, reply = _post(page.port, body, f"Content-Length: {len(body)}\r\n")
        assert status == 400 and message in reply["error"], reply
        assert page.state()["current"]["id"] == "img0"  # the server goes on
    assert rows(out)[1:] == []


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ("Content-Length: \u00b2\r\n", 400, "Content-Length"),  # a digit to str.isdigit, not to int()
        ("Content-Length: -1\r\n", 400, "Content-Length"),
        ("Content-Length: 1e3\r\n", 400, "Content-Length"),
        ("", 400, "Content-Length"),
        ("Content-Length: 5\r\nContent-Length: 9\r\n", 400, "one Content-Length"),
        ("Content-Length: 99999999999999999999\r\n", 400, "Content-Length"),
        ("Content-Length: 5000\r\n", 413, "over 4096"),
        ("Transfer-Encoding: chunked\r\n", 400, "Transfer-Encoding"),
        ("Content-Length: 200\r\n", 400, "the body ended after"),  # fewer bytes than announced
    ],
)
def test_malformed_headers_are_answered_not_dropped(tmp_path, headers, status, message):
    with serving(fake_items(), tmp_path / "a.csv") as page:
        body = _answer_body(page)
        head = (f"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1:{page.port}\r\nContent-Type: application/json\r\n"
                f"{headers}\r\n").encode("latin-1")  # fmt: skip
        with socket.create_connection(("127.0.0.1", page.port), timeout=10) as sock:
            sock.sendall(head + body)
            sock.shutdown(socket.SHUT_WR)  # the short body ends here
            reply = b"".join(iter(lambda: sock.recv(65536), b""))
        assert int(reply.split(b" ", 2)[1]) == status, reply[:300]
        assert message in json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
        assert page.answer("img0", "cat")[0] == 200


def test_a_garbage_request_line_and_huge_headers_get_an_error_status(tmp_path):
    with serving(fake_items(), tmp_path / "a.csv") as page:
        reply = _raw(page.port, b"\x16\x03\x01garbage\r\n\r\n")
        assert reply.startswith(b"HTTP/1.0 400") and b'"error": "Bad request' in reply
        huge = b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX: " % page.port + b"a" * 70000 + b"\r\n\r\n"
        assert _raw(page.port, huge).split(b" ", 2)[1] in (b"400", b"431")
        many = b"GET /api/state HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n"
        assert _raw(page.port, many).split(b" ", 2)[1] == b"431"
        assert page.state()["current"]["id"] == "img0"


def test_an_error_inside_a_handler_is_a_500_that_names_it(tmp_path, monkeypatch):
    with serving(fake_items(), tmp_path / "a.csv") as page:
        monkeypatch.setattr(page.server.session, "state", lambda notice=None: 1 / 0)
        status, body = page.get("/api/state")
        assert status == 500 and "ZeroDivisionError" in json.loads(body)["error"]


def test_stalled_connections_time_out_and_connections_are_bounded(tmp_path):
    with serving(fake_items(), tmp_path / "a.csv", request_timeout=0.6, max_connections=2) as page:
        stalled = [socket.create_connection(("127.0.0.1", page.port), timeout=10) for _ in range(2)]
        stalled[0].sendall(b"POST /api/answer HTTP/1.1\r\nContent-Le")  # half a request, then nothing
        time.sleep(0.2)
        # Both workers are taken: a third connection is answered 503 at once rather than queued forever.
        assert _raw(page.port, b"GET /api/state HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 503")
        started = time.monotonic()
        for sock in stalled:
            assert sock.recv(100) == b""  # the server closed it: the socket timed out
            sock.close()
        assert time.monotonic() - started < 5
        time.sleep(0.1)
        assert page.state()["current"]["id"] == "img0"  # the slots are free again


def test_a_non_loopback_server_asks_for_its_token_on_every_request(tmp_path):
    out = tmp_path / "a.csv"
    with serving(fake_items(), out, host="0.0.0.0") as page:
        server = page.server
        assert server.token and len(server.token) >= 20 and server.url.endswith(f"/?token={server.token}")
        stranger = Page(page.port)  # no cookie
        for path in ("/", "/app.js", "/api/state", "/image/0.png", f"/?token={server.token[:-1]}x"):
            status, body = stranger.get(path)
            assert status == 401 and b"access token" in body, path
        status, _reply = stranger.post("/api/answer", {"id": "img0", "display": "x", "class": "cat", "seconds": 1})
        assert status == 401
        # The printed address: the token becomes a cookie for this host and port, and the address bar loses it.
        status, headers, _ = stranger.request("GET", f"/?token={server.token}")
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"]
        assert cookie.startswith(f"splml_annotate_{page.port}={server.token}") and "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert page.answer("img0", "cat")[0] == 200  # the page's requests carry the cookie
        # DNS rebinding: another site's page reaching this address has neither token nor cookie.
        rebound = {"Host": f"evil.example:{page.port}", "Origin": f"http://evil.example:{page.port}"}
        assert stranger.request("GET", "/api/state", headers=rebound)[0] == 401
        with_cookie = {**rebound, "Cookie": page.cookie, "Content-Type": "application/json"}
        body = json.dumps({"id": "img1", "display": page.state()["display"], "class": "dog", "seconds": 1})
        assert (
            page.request("POST", "/api/answer", body.encode(), {**with_cookie, "Sec-Fetch-Site": "cross-site"})[0]
            == 403
        )
    assert [r[:2] for r in rows(out)[1:]] == [["img0", "cat"]]


def test_a_loopback_server_checks_host_and_origin_without_a_token(tmp_path):
    out = tmp_path / "a.csv"
    with serving(fake_items(), out) as page:
        assert page.server.token is None and "token" not in page.server.url
        body = json.dumps({"id": "img0", "display": page.state()["display"], "class": "cat", "seconds": 1}).encode()
        json_type = {"Content-Type": "application/json"}
        assert page.request("GET", "/api/state", headers={"Host": f"evil.example:{page.port}"})[0] == 403
        assert page.request("POST", "/api/answer", body, {**json_type, "Origin": "null"})[0] == 403
        assert page.request("POST", "/api/answer", body, {**json_type, "Sec-Fetch-Site": "same-site"})[0] == 403
        assert page.request("POST", "/api/answer", body, {**json_type, "Sec-Fetch-Site": "same-origin"})[0] == 200
    assert [r[:2] for r in rows(out)[1:]] == [["img0", "cat"]]

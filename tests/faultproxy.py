"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the GCS emulator (a test helper).

Every GCS client of the process (gcsfs, tensorstore) is pointed at the proxy instead of the
emulator (``STORAGE_EMULATOR_HOST``); requests pass through unchanged until a test asks for a
fault, which then happens on the wire, as a client would meet it from real GCS:

- ``outage(seconds)``: the port refuses connections for that long (the listening socket is
  closed and re-opened: what a stopped server looks like), in the background;
- ``fail(substring, status, times)``: the first object whose name contains ``substring`` is
  picked, and the next ``times`` requests for that one object are answered ``status`` (503 by
  default) without reaching the emulator;
- ``slow(seconds)``: every upload (POST/PUT/PATCH) waits that long before it is forwarded.

``log`` records (method, decoded path, status) of every request, faults included.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import socketserver
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass
class FaultProxy:
    target: str  # the emulator, host:port
    port: int = 0
    log: list[tuple[str, str, int]] = field(default_factory=list)
    _fail: list[list] = field(default_factory=list)  # [substring, status, times left, object]
    _slow: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: socketserver.TCPServer | None = None
    _open: set = field(default_factory=set)  # client connections being served

    def start(self) -> FaultProxy:
        self._serve()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def setup(self) -> None:
                super().setup()
                proxy._open.add(self.connection)

            def finish(self) -> None:
                proxy._open.discard(self.connection)
                super().finish()

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        out += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                    return out
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self) -> None:
                body = self._body()
                path = urllib.parse.unquote(self.path)
                status = proxy._injected(path)
                if status:
                    proxy.log.append((self.command, path, status))
                    msg = b'{"error": {"code": %d, "message": "injected fault"}}' % status
                    return self._reply(status, [("Content-Type", "application/json")], msg)
                if proxy._slow and self.command in ("POST", "PUT", "PATCH"):
                    time.sleep(proxy._slow)
                conn = http.client.HTTPConnection(proxy.target, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                proxy.log.append((self.command, path, resp.status))
                self._reply(resp.status, resp.getheaders(), data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

        class Server(http.server.ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _injected(self, path: str) -> int:
        name = _object(path)
        with self._lock:
            for rule in self._fail:
                if name is None or rule[0] not in name or rule[2] == 0:
                    continue
                rule[3] = rule[3] or name  # the one object this rule fails
                if name == rule[3]:
                    rule[2] -= 1
                    return rule[1]
        return 0

    def fail(self, substring: str, status: int = 503, times: int = 1) -> None:
        """Answer ``status`` to the next ``times`` requests (-1: all) for the first object
        whose name contains ``substring``."""
        with self._lock:
            self._fail.append([substring, status, times, None])

    def slow(self, seconds: float) -> None:
        self._slow = seconds

    def outage(self, seconds: float) -> threading.Thread:
        """Refuse connections for ``seconds`` (in the background); returns the thread."""

        def down() -> None:
            self.stop()
            time.sleep(seconds)
            self._serve()

        t = threading.Thread(target=down, daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        """Stop listening and cut every open connection (as a server that went away)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for sock in list(self._open):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _object(path: str) -> str | None:
    """The object a JSON-API request names: ``.../o/<name>`` or an upload's ``name=``."""
    url = urllib.parse.urlsplit(path)
    if "name" in (q := urllib.parse.parse_qs(url.query)):
        return q["name"][0]
    return url.path.split("/o/", 1)[1] if "/o/" in url.path else None

"""A small fake of the public ``quickdraw_dataset`` bucket: a real HTTP server on 127.0.0.1.

It serves bytes by path with ``Content-Length``, HTTP Range requests and ``x-goog-hash`` (MD5 and
CRC32C, as the bucket reports them), and can misbehave on request: drop the connection part-way
through a file, answer 503 a number of times, or report a wrong hash. It records every request.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.server
import socket
import threading
import urllib.parse


@dataclasses.dataclass
class Behaviour:
    """How the server treats one path."""

    drop_after: int | None = None  # close the connection after this many body bytes (once)
    failures: int = 0  # answer 503 this many times first
    wrong_md5: bool = False
    hashes: tuple[str, ...] = ("crc32c", "md5")  # which hashes x-goog-hash reports


@dataclasses.dataclass
class Request:
    path: str
    range: str | None


class FakeBucket:
    """Files by path (``sketchrnn/cat.npz``), behaviours by path, and the request log."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.behaviours: dict[str, Behaviour] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def put(self, path: str, data: bytes, **behaviour) -> None:
        self.files[path] = data
        self.behaviours[path] = Behaviour(**behaviour)

    def gets(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def __enter__(self) -> FakeBucket:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        bucket = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                path = urllib.parse.unquote(self.path.lstrip("/"))
                with bucket._lock:
                    bucket.requests.append(Request(path, self.headers.get("Range")))
                    behaviour = bucket.behaviours.get(path)
                    data = bucket.files.get(path)
                    if behaviour is not None and behaviour.failures > 0:
                        behaviour.failures -= 1
                        self._empty(503)
                        return
                if data is None:
                    self._empty(404)
                    return
                start = 0
                requested = self.headers.get("Range")
                if requested and requested.startswith("bytes="):
                    start = int(requested.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self._empty(416)
                        return
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                md5 = hashlib.md5(b"tampered" if behaviour.wrong_md5 else data).digest()
                reported = {"md5": base64.b64encode(md5).decode(), "crc32c": _crc32c(data)}
                self.send_header("x-goog-hash", ",".join(f"{k}={reported[k]}" for k in behaviour.hashes))
                self.end_headers()
                if behaviour.drop_after is not None and len(body) > behaviour.drop_after:
                    self.wfile.write(body[: behaviour.drop_after])
                    self.wfile.flush()
                    behaviour.drop_after = None  # once
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _empty(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


def _crc32c(data: bytes) -> str:
    import google_crc32c

    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()

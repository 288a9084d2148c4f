"""A local HTTP server of model files for the download tests (http.server in a thread).

It answers ``Range`` requests (206 with ``Content-Range``), can cut the connection after a
number of bytes for the first responses of a path (a lost connection), send a body slowly
(``slow``: for progress bars to be seen), redirects
``/redirect/<path>`` to ``<path>``, and records the requests it got.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ModelServer:
    files: dict[str, bytes]
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the cut
    cuts_left: dict[str, int] = field(default_factory=dict)  # path -> how many responses are still cut
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    slow: dict[str, float] = field(default_factory=dict)  # path -> seconds the body takes (20 pieces)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def start(self) -> "ModelServer":
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                range_header = self.headers.get("Range")
                owner.requests.append((self.path, range_header))
                if self.path.startswith("/redirect/"):
                    self.send_response(302)
                    self.send_header("Location", self.path[len("/redirect"):])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = self.path.split("?", 1)[0]
                if path.startswith("/download/"):  # no file name in the URL: Content-Disposition names it
                    path = "/" + path[len("/download/"):]
                    disposition = f'attachment; filename="{path.rsplit("/", 1)[1]}"'
                else:
                    disposition = None
                data = owner.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if range_header and range_header.startswith("bytes="):
                    start = int(range_header[len("bytes="):].split("-", 1)[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                if disposition:
                    self.send_header("Content-Disposition", disposition)
                self.end_headers()
                body = data[start:]
                if owner.cuts_left.get(path, 0) > 0:
                    owner.cuts_left[path] -= 1
                    self.wfile.write(body[: owner.cut_after[path]])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if path in owner.slow:
                    piece = max(1, len(body) // 20)
                    for offset in range(0, len(body), piece):
                        self.wfile.write(body[offset:offset + piece])
                        self.wfile.flush()
                        time.sleep(owner.slow[path] / 20)
                    return
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

"""Serve a corpus folder over HTTP on 127.0.0.1 (a free port, a daemon thread, stopped on exit).

The folder is read through fsspec, so a corpus stored under ``s3://`` is served the same way as a local one. Used by
the download stage (corpus URLs are ``corpus.PLACEHOLDER`` + path; ``host_port`` is allow-listed for the run) and by
tests and benchmarks. ``delay_s`` slows every response (tests use it to interrupt a download half-way).

    with serve_folder("/path/to/corpus") as server:
        fetch(server.base_url + "www/images/syn-0000001.jpg")   # base_url: "http://127.0.0.1:PORT/"
"""

from __future__ import annotations

import mimetypes
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import fsspec


class CorpusServer(ThreadingHTTPServer):
    """An HTTP server over one fsspec folder; ``requests`` counts the GETs it answered."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: with img2dataset's 16+ threads connecting at once the queue
    # overflows, the kernel drops SYNs and each dropped connect waits for a retransmit (seen as threads parked in
    # connect()).
    request_queue_size = 256

    def __init__(self, root: str, delay_s: float = 0.0, **storage_options: Any) -> None:
        self.fs, base = fsspec.core.url_to_fs(root, **storage_options)
        self.base = base.rstrip("/")
        self.delay_s = delay_s
        self.requests = 0
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/``."""
        return f"http://127.0.0.1:{self.server_address[1]}/"

    @property
    def host_port(self) -> str:
        """``127.0.0.1:PORT``: the ``data.download.allow_hosts`` entry that lets the download fetch from this server.

        Loopback is refused by the download's fetch policy; the stage allow-lists this one address and port (not all
        of loopback) while it serves the generated corpus.
        """
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: CorpusServer
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        srv = self.server
        with srv._lock:
            srv.requests += 1
        if srv.delay_s:
            time.sleep(srv.delay_s)
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        if not rel or ".." in rel.split("/"):
            self.send_error(404)
            return
        try:
            body = srv.fs.cat_file(f"{srv.base}/{rel}")
        except (FileNotFoundError, IsADirectoryError):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", mimetypes.guess_type(rel)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        """Silence per-request logging (thousands of lines per download)."""


@contextmanager
def serve_folder(root: str, delay_s: float = 0.0, **storage_options: Any) -> Iterator[CorpusServer]:
    """Serve ``root`` on 127.0.0.1 for the duration of the block; yields the server (``.base_url``)."""
    server = CorpusServer(root, delay_s, **storage_options)
    thread = threading.Thread(target=server.serve_forever, name="corpus-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

"""The corpus server (tasks/download_server.py): serves a folder on 127.0.0.1, 404 otherwise, stops when done."""

from __future__ import annotations

import select
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tasks.download_server import CorpusServer, serve_folder


def test_serve_folder__files_404_and_shutdown(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "a.jpg").write_bytes(b"\xff\xd8\xffdata")
    with serve_folder(str(tmp_path)) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.base_url + "www/a.jpg", timeout=5) as r:
            assert r.read() == b"\xff\xd8\xffdata" and r.headers["Content-Type"] == "image/jpeg"
        for missing in ("www/b.jpg", "../etc/passwd", ""):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(server.base_url + missing, timeout=5)
            assert err.value.code == 404
        assert server.requests == 4
        url = server.base_url
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "www/a.jpg", timeout=2)


def test_corpus_server__backlog_takes_a_burst_of_connects(tmp_path: Path) -> None:
    # img2dataset opens one connection per image from 16+ threads per process. With socketserver's default backlog
    # of 5 the kernel drops the SYNs beyond it and those connects wait a second for a retransmit.
    server = CorpusServer(str(tmp_path))  # listening, but not accepting: the backlog alone holds the burst
    socks = [socket.socket() for _ in range(64)]
    try:
        for s in socks:
            s.setblocking(False)
            s.connect_ex(server.server_address)
        _, writable, _ = select.select([], socks, [], 0.5)
        assert len(writable) == len(socks)
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for s in socks)
    finally:
        for s in socks:
            s.close()
        server.server_close()

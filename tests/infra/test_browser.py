"""Headless Chromium as the MLflow UI browser test drives it (infra/browser.py, flags in infra/offline.py), against
a small page served on 127.0.0.1 that draws its content late from JavaScript, as a React app does. Skips where no
Chromium is installed (`make chromium`, run by `make test`, installs Debian's)."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from infra.offline import CHROMIUM_BINARIES, chromium_command

pytestmark = pytest.mark.skipif(not any(shutil.which(b) for b in CHROMIUM_BINARIES),
                                reason="no Chromium: `make chromium` installs Debian's (make test does)")

PAGE = """<!doctype html><html><body><div id="out">loading</div><script>
setTimeout(() => { document.getElementById('out').textContent = 'drawn ' + location.hash; }, 400);
window.addEventListener('hashchange', () => { document.getElementById('out').textContent = 'now ' + location.hash; });
</script></body></html>"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("site")
    (root / "index.html").write_text(PAGE)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()


def test_browser__waits_for_what_the_page_draws_late_follows_hash_routes_and_takes_a_screenshot(
        site: str, tmp_path: Path) -> None:
    from infra.browser import Browser, BrowserError

    with Browser(width=640, height=360) as b:
        b.open(f"{site}#/first")
        assert b.wait("document.getElementById('out').textContent.startsWith('drawn')") is True
        assert "drawn #/first" in b.text()
        b.open(f"{site}#/second")  # a hash route of the same page, as the MLflow UI's
        b.wait("document.body.innerText.includes('now #/second')")
        png = b.screenshot(tmp_path / "page.png").read_bytes()
        with pytest.raises(BrowserError, match="did not show never in 0.5 s"):
            b.wait("false", timeout=0.5, what="never")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 640  # the IHDR width: the window size given


def test_chromium__opens_a_page_without_any_connection_or_dns_query_off_loopback(site: str, tmp_path: Path) -> None:
    """Every socket Chromium opens while it starts, loads the page and exits, traced by strace: TCP connects only to
    loopback, and no DNS query (its update, sign-in, time and checkin requests all fail before a name is looked up)."""
    if shutil.which("strace") is None:
        pytest.skip("no strace to watch Chromium's sockets")
    trace = tmp_path / "trace"
    cmd = chromium_command(tmp_path / "profile", "--dump-dom", "--virtual-time-budget=5000", f"{site}#/x")
    proc = subprocess.run(["strace", "-f", "-ff", "-e", "trace=socket,connect,sendto,sendmmsg", "-o", str(trace),
                           *cmd], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "drawn #/x" in proc.stdout, proc.stderr[-3000:]
    tcp_off_loopback, dns = [], []
    for per_process in tmp_path.glob("trace.*"):  # one file per process: no interleaved calls
        kinds: dict[str, str] = {}
        for line in per_process.read_text(errors="replace").splitlines():
            if m := re.match(r"socket\(AF_INET6?, (SOCK_\w+).* = (\d+)$", line):
                kinds[m.group(2)] = m.group(1)
            elif m := re.match(r"connect\((\d+), \{sa_family=AF_INET6?, (?:sin6?_port)=htons\((\d+)\), (.*?)\}", line):
                fd, port, address = m.groups()
                loopback = re.search(r'"(127\.\d+\.\d+\.\d+|::1|::ffff:127\.[\d.]+)"', address) is not None
                if port == "53":
                    dns.append(line)
                if kinds.get(fd) == "SOCK_STREAM" and not loopback:
                    tcp_off_loopback.append(line)
            elif "htons(53)" in line:
                dns.append(line)
    assert any(tmp_path.glob("trace.*")) and not tcp_off_loopback and not dns, (tcp_off_loopback, dns)

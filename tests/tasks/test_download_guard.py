"""The download's fetch policy (tasks/download_guard.py), alone and through the download stage.

Every server here is a real one started by the test on a loopback address and records who connected: 127.0.0.1
(allow-listed by port) serves the good and the bad answers; 127.0.0.2 and 127.0.0.3 stand for hosts that must be
refused and must see no connection at all. No test reaches outside 127.0.0.0/8.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from franca_core.data.corpus import jpeg
from franca_core.data.download_causes import CAUSES
from franca_core.data.synthetic import render_image
from tasks.common.digests import sha256_file
from tasks.common.runner import run_stage
from tasks.common.store import StageResult
from tasks.common.tables import read_parquet
from tasks.download_guard import Fetcher, FetchFailed, FetchPolicy, address_problem

Route = Callable[[BaseHTTPRequestHandler], None]
SECRET = b"AWS_SECRET_ACCESS_KEY=franca-test-not-a-real-secret"


class Site(ThreadingHTTPServer):
    """A web server on one loopback address: ``routes`` by path, and every connection it accepted."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, host: str, routes: dict[str, Route] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.routes, self.tls = routes or {}, tls
        self.clients: list[str] = []  # one entry per accepted connection, before any request is read
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.stopping = threading.Event()
        super().__init__((host, 0), _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        self.clients.append(addr[0])
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, addr

    def url(self, path: str, scheme: str = "http", host: str | None = None) -> str:
        return f"{scheme}://{host or self.server_address[0]}:{self.server_address[1]}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: Site

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requests.append((self.path, dict(self.headers.items())))
        route = self.server.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_error(404)
        else:
            route(self)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base class)
        """Quiet."""


@contextmanager
def site(host: str, routes: dict[str, Route] | None = None, tls: ssl.SSLContext | None = None) -> Iterator[Site]:
    """A ``Site`` serving on ``host`` for the block."""
    server = Site(host, routes, tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def body(data: bytes, *headers: tuple[str, str], length: bool = True) -> Route:
    """200 with ``data``; without ``length`` the body ends when the connection closes (no Content-Length)."""
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        for name, value in headers:
            h.send_header(name, value)
        if length:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    return route


def redirect(location: Callable[[], str]) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", location())
        h.send_header("Content-Length", "0")
        h.end_headers()
    return route


def drip(every_s: float = 0.1, headers_too: bool = False) -> Route:
    """One byte every ``every_s`` (of the body, or of the headers), until the client leaves or the site stops."""
    def route(h: BaseHTTPRequestHandler) -> None:
        if headers_too:
            h.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
        else:
            h.send_response(200)
            h.send_header("Content-Length", "1000")
            h.end_headers()
        end = time.monotonic() + 60
        try:
            while not h.server.stopping.is_set() and time.monotonic() < end:  # type: ignore[attr-defined]
                h.wfile.write(b"\xff" if not headers_too else b"a")
                h.wfile.flush()
                time.sleep(every_s)
        except OSError:  # the client gave up: what the deadline is for
            pass
    return route


def image(seed: int) -> bytes:
    return jpeg(render_image(np.random.default_rng(seed), 48)[0])


def error_of(fetcher: Fetcher, url: str) -> str:
    """The error text of ``url`` ("" when it was fetched)."""
    _, stream, error = fetcher.download_with_retry((0, url), retries=1)
    return error or ""


# ------------------------------------------------------------------------------------------- address classifier
# Only loopback and unspecified literals here (the project's rule: no private or public address in a test, even one
# the code must refuse); the other kinds are judged from ipaddress's own flags, given by a stand-in below.
@pytest.mark.parametrize(("address", "problem"), [
    ("127.0.0.1", "loopback"), ("127.0.0.2", "loopback"), ("::1", "loopback"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("::ffff:127.0.0.2", "loopback"), ("2002:7f00:2::", "loopback"), ("64:ff9b::7f00:2", "loopback"),
])
def test_address_problem__literals(address: str, problem: str | None) -> None:
    # IPv4-mapped, 6to4 and NAT64 forms are judged by the IPv4 address they reach. Nothing connects to these.
    assert address_problem(ipaddress.ip_address(address)) == problem


class _Flags:
    """An address as ipaddress describes it: only the ``is_*`` flags ``address_problem`` reads."""

    def __init__(self, *kinds: str, is_global: bool = False) -> None:
        for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "site_local", "private"):
            setattr(self, f"is_{kind}", kind in kinds)
        self.is_global = is_global


@pytest.mark.parametrize(("flags", "problem"), [
    (_Flags("private"), "private"), (_Flags("link_local", "private"), "link-local"),
    (_Flags("multicast"), "multicast"), (_Flags("reserved", "private"), "reserved"),
    (_Flags("site_local"), "site-local"), (_Flags(), "not globally routable"), (_Flags(is_global=True), None),
])
def test_address_problem__each_kind_of_non_public_address(flags: _Flags, problem: str | None) -> None:
    assert address_problem(flags) == problem  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- Fetcher, one rule each
@pytest.fixture(scope="module")
def fetcher_sites() -> Iterator[tuple[Site, Site, Site]]:
    """(allowed 127.0.0.1 site with every kind of answer, refused 127.0.0.2 site, refused 127.0.0.3 site)."""
    with site("127.0.0.2", {"/a.jpg": body(image(2))}) as two, site("127.0.0.3", {"/a.jpg": body(image(3))}) as three:
        with site("127.0.0.1") as good:
            good.routes.update({
                "/a.jpg": body(image(1)), "/big": body(b"\xff\xd8\xff" + b"L" * 5000),
                "/big-unsized": body(b"\xff\xd8\xff" + b"L" * 5000, length=False),
                "/drip": drip(), "/drip-headers": drip(headers_too=True),
                "/noai": body(image(4), ("X-Robots-Tag", "noai")),
                "/noai-ours": body(image(5), ("X-Robots-Tag", "franca-pipeline: noimageai, nofollow")),
                "/noai-theirs": body(image(6), ("X-Robots-Tag", "otherbot: noai")),
                "/to-a": redirect(lambda: "/a.jpg"), "/to-three": redirect(lambda: three.url("/a.jpg")),
                "/to-file": redirect(lambda: "file:///etc/hostname"), "/loop": redirect(lambda: "/loop"),
                "/teapot": lambda h: h.send_error(418)})
            yield good, two, three


def _fetcher(good: Site, **policy: Any) -> Fetcher:
    return Fetcher(FetchPolicy(allow_hosts=(f"127.0.0.1:{good.server_address[1]}",), max_bytes=4000, deadline_s=1.5,
                               timeout_s=1.0, **policy))


def test_fetcher__each_rule_gives_its_cause(fetcher_sites: tuple[Site, Site, Site], tmp_path: Path) -> None:
    good, two, three = fetcher_sites
    fetcher = _fetcher(good)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    expected = {
        good.url("/a.jpg"): "", good.url("/to-a"): "", good.url("/noai-theirs"): "",
        f"file://{tmp_path}/secret.txt": "refused_scheme: file: scheme", "ftp://127.0.0.1/x": "refused_scheme",
        "/etc/hostname": "refused_scheme", good.url("/to-file"): "refused_scheme",
        two.url("/a.jpg"): "refused_host: 127.0.0.2 resolves to 127.0.0.2 (loopback)",
        good.url("/to-three"): "refused_host: redirect 1 leads to a non-public address (loopback)",
        good.url("/a.jpg", host="localhost"): "refused_host",  # allowed by address:port, not by name
        good.url("/big"): "too_large: Content-Length 5003 over max_bytes=4000",
        good.url("/big-unsized"): "too_large: body over max_bytes=4000",
        good.url("/noai"): "opted_out", good.url("/noai-ours"): "opted_out",
        good.url("/loop"): "http_error: more than 5 redirects", good.url("/teapot"): "http_error: HTTP Error 418",
        good.url("/nothing"): "dead_url: HTTP Error 404: Not Found",
    }
    got = {url: error_of(fetcher, url) for url in expected}
    assert {u: got[u] for u, want in expected.items() if not (got[u].startswith(want) if want else got[u] == "")} == {}
    assert two.clients == [] and three.clients == []  # refused before any connection
    assert SECRET.decode() not in "".join(got.values())


@pytest.mark.parametrize("path", ["/drip", "/drip-headers"])
def test_fetcher__drip_stops_at_the_deadline(fetcher_sites: tuple[Site, Site, Site], path: str) -> None:
    good, _, _ = fetcher_sites
    start = time.monotonic()
    error = error_of(_fetcher(good), good.url(path))  # each byte comes well within timeout_s; only the deadline ends it
    assert error.startswith("deadline: not fetched within deadline_s=1.5")
    assert 1.4 < time.monotonic() - start < 2.5


def test_fetcher__opt_outs_off_when_no_directives(fetcher_sites: tuple[Site, Site, Site]) -> None:
    good, _, _ = fetcher_sites
    assert error_of(_fetcher(good, disallowed_header_directives=()), good.url("/noai")) == ""
    fetcher = _fetcher(good, user_agent_token="franca-pipeline")
    assert error_of(fetcher, good.url("/a.jpg")) == ""
    assert "compatible; franca-pipeline;" in good.requests[-1][1]["User-Agent"]


def test_fetcher__connects_to_the_address_it_checked(fetcher_sites: tuple[Site, Site, Site],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A resolver that changes its answer (DNS rebinding): the first answer, checked, is the one connected to; the
    # name travels in the Host header only.
    good, two, _ = fetcher_sites
    real, calls = socket.getaddrinfo, []

    def rebinding(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        calls.append(host)
        return real("127.0.0.1" if len(calls) == 1 else "127.0.0.2", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    port = good.server_address[1]
    fetcher = Fetcher(FetchPolicy(allow_hosts=(f"images.test:{port}",)))
    assert fetcher.fetch(f"http://images.test:{port}/a.jpg") == image(1)
    assert calls == ["images.test"] and two.clients == []
    assert good.requests[-1][1]["Host"] == f"images.test:{port}"


def _self_signed(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for a certificate of DNS name ``name``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return server, ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))


def test_fetcher__https_checks_the_certificate_of_the_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server_tls, client_tls = _self_signed(tmp_path, "images.test")
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: real(
        "127.0.0.1" if host in ("images.test", "other.test") else host, *a, **k))
    with site("127.0.0.1", {"/a.jpg": body(image(1))}, tls=server_tls) as secure:
        port = secure.server_address[1]
        fetcher = Fetcher(FetchPolicy(allow_hosts=("images.test", "other.test")), tls=client_tls)
        assert fetcher.fetch(f"https://images.test:{port}/a.jpg") == image(1)
        with pytest.raises(FetchFailed, match="network_error: TLS: CERTIFICATE_VERIFY_FAILED"):
            fetcher.fetch(f"https://other.test:{port}/a.jpg")  # same server, a name its certificate does not carry


# ------------------------------------------------------------------------------------------- through the stage
def subset_of(urls: list[str], folder: Path) -> StageResult:
    """A select result holding ``urls`` (LAION-style columns), written under ``folder``."""
    n = len(urls)
    pq.write_table(pa.table({
        "sample_id": [f"s{i:03d}" for i in range(n)], "url": urls, "caption": [f"caption {i}" for i in range(n)],
        "width": pa.array([48] * n, pa.int32()), "height": pa.array([48] * n, pa.int32()),
        "similarity": [0.25 + i / 100 for i in range(n)], "license": ["CC-BY-4.0"] * n}), folder / "subset.parquet")
    path = str(folder / "subset.parquet")
    return StageResult(stage="select", uri=str(folder), input_digest="0" * 64, digest=sha256_file(path),
                       files={"subset": path})


def test_download_stage__mixed_url_list_counted_by_cause(tmp_path: Path, make_data_config: Any,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "local.jpg").write_bytes(image(9))
    big, noai = b"\xff\xd8\xff" + b"TOO-LARGE-BODY" * 2000, image(7)
    good_images = {f"/ok-{i}.jpg": image(10 + i) for i in range(3)}
    with site("127.0.0.2", {"/a.jpg": body(image(2))}) as two, site("127.0.0.3", {"/a.jpg": body(image(3))}) as three, \
            site("127.0.0.1") as good:
        good.routes.update({**{p: body(b) for p, b in good_images.items()},
                            "/to-ok": redirect(lambda: "/ok-0.jpg"), "/to-three": redirect(lambda: three.url("/a.jpg")),
                            "/big": body(big), "/drip": drip(0.2), "/noai": body(noai, ("X-Robots-Tag", "noai"))})
        urls = {**{good.url(p): "success" for p in good_images}, good.url("/to-ok"): "success",
                f"file://{tmp_path}/secret.txt": "refused_scheme", f"file://{tmp_path}/local.jpg": "refused_scheme",
                two.url("/a.jpg"): "refused_host", good.url("/to-three"): "refused_host",
                good.url("/big"): "too_large", good.url("/drip"): "deadline", good.url("/noai"): "opted_out"}
        cfg = make_data_config(tmp_path / "store", "data.download.retries=1", "data.download.max_bytes=20000",
                               "data.download.deadline_s=3", "data.download.timeout_s=2",
                               f"data.download.allow_hosts=['127.0.0.1:{good.server_address[1]}']")
        result = run_stage("download", cfg, subset=subset_of(list(urls), tmp_path))
        assert two.clients == [] and three.clients == []  # no connection to a refused host, ever
    expected, n = Counter(urls.values()), len(urls)
    assert {c: result.stats[c] for c in CAUSES} == {c: expected.get(c, 0) for c in CAUSES}
    assert result.stats["attempted"] == n
    samples = read_parquet(result.files["samples"]).to_pylist()
    assert {s["url"]: s["cause"] for s in samples} == urls
    tars = sorted(Path(result.files["shards"]).glob("*.tar"))
    for refused in (SECRET, image(9), image(2), image(3), big[:64], noai):
        assert not any(refused in p.read_bytes() for p in tars)  # no refused byte in any shard
    kept = set()
    for path in tars:  # what the shards hold are the served good images, byte for byte
        with tarfile.open(path) as tar:
            kept |= {hashlib.sha256(tar.extractfile(m).read()).hexdigest()  # type: ignore[union-attr]
                     for m in tar if m.name.endswith(".jpg")}
    assert kept == {hashlib.sha256(b).hexdigest() for b in good_images.values()}
    assert SECRET.decode() not in str(samples) and SECRET not in Path(result.files["log"]).read_bytes()
    assert f"download: 1/1 shards, {n}/{n} URLs (4 ok)" in capsys.readouterr().out

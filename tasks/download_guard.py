"""The download stage's fetch of one image URL: no local files, no private hosts, bounded in bytes and in time.

img2dataset 1.47 fetches with ``urllib.request.urlopen``: any scheme urllib knows (``file://`` included), any host
(loopback, private, link-local cloud metadata), redirects followed without a check, the body read whole with only a
per-operation ``timeout`` (a body dripping one byte a second holds a thread for ever). ``tasks.download_worker``
puts ``Fetcher.download_with_retry`` in the place of img2dataset's ``download_image_with_retry``, so every URL goes
through the rules below before any connection. Each refusal is a cause of ``franca_core.data.download_causes``; the
error text starts with it (``"refused_host: ..."``), the form ``download_cause`` reads:

- ``refused_scheme``: only http and https, on the URL and on every redirect hop.
- ``refused_host``: every address the host resolves to must be public (``address_problem``), unless the host is on
  ``allow_hosts`` (``"name"`` or ``"name:port"``); checked on every redirect hop.
- ``too_large``: a body over ``max_bytes`` (its Content-Length, or the bytes read so far).
- ``deadline``: the whole fetch of a URL (retries, redirects, connects, TLS, headers, body) within ``deadline_s``.
  Every blocking operation gets ``min(timeout_s, time left)`` as its socket timeout and none starts after the
  deadline, so a drip cannot stretch it.
- ``opted_out``: an ``X-Robots-Tag`` directive on ``disallowed_header_directives`` for all agents or for
  ``user_agent_token`` (img2dataset's own ``is_disallowed``); the body is then never read.

DNS rebinding: a host is resolved once per hop and the socket connects to the very addresses that were checked (the
name goes only into the Host header and into TLS's SNI and certificate check), so a second, different DNS answer is
never used. No proxy settings are read (a proxy would make the connection on our behalf to an unchecked address).

Error texts are composed here from status codes, exception types and OS error strings, never from response bytes:
the reason phrase of a status is Python's standard one, not the server's, and a refused redirect's target is not
echoed.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from franca_core.data.download_causes import (
    DEAD_URL,
    DEADLINE,
    HTTP_ERROR,
    NETWORK_ERROR,
    OPTED_OUT,
    OTHER,
    REFUSED_HOST,
    REFUSED_SCHEME,
    TOO_LARGE,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
RETRIED = (NETWORK_ERROR, HTTP_ERROR)  # transient; a refusal, a 404 or a spent deadline is not tried again
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # IPv4 addresses seen through a NAT64 gateway
_HOST = re.compile(r"[A-Za-z0-9._:%-]+")  # after IDNA: nothing that could break the request line or headers
_TARGET_SAFE = "".join(chr(c) for c in range(33, 127))  # quote() then encodes only spaces, controls and non-ASCII
_CHUNK = 1 << 20


class FetchFailed(Exception):
    """One URL not fetched; ``str()`` is ``"<cause>: <reason>"`` with ``cause`` in ``download_causes.CAUSES``."""

    def __init__(self, cause: str, reason: str) -> None:
        super().__init__(f"{cause}: {reason}")
        self.cause = cause


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address (``"loopback"``, ``"private"``, ...); None when it is one.

    An IPv6 address carrying an IPv4 one (``::ffff:a.b.c.d``, 6to4, NAT64) is judged by the IPv4 address it reaches.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is not None:
            return address_problem(embedded)
    for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "site_local", "private"):
        if getattr(ip, f"is_{kind}", False):
            return kind.replace("_", "-")
    return None if ip.is_global else "not globally routable"  # e.g. 100.64.0.0/10, shared by carrier-grade NAT


@dataclass(frozen=True)
class FetchPolicy:
    """What the download may fetch and how long and how much (the ``data.download`` fields of the same names)."""

    allow_hosts: tuple[str, ...] = ()
    max_bytes: int = 32 * 2**20
    deadline_s: float = 30.0
    timeout_s: float = 10.0
    user_agent_token: str | None = "franca-pipeline"
    disallowed_header_directives: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex")


class _Clock:
    """The deadline of one URL; ``budget()`` is the timeout of the next blocking operation."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy, self.deadline, self.capped = policy, time.monotonic() + policy.deadline_s, False

    def budget(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise FetchFailed(DEADLINE, f"not fetched within deadline_s={self.policy.deadline_s:g}")
        self.capped = left < self.policy.timeout_s  # a time-out now means the deadline, not a silent server
        return min(self.policy.timeout_s, left)


class _BoundedSocketIO(io.RawIOBase):
    """A socket read through the clock: each ``recv`` gets the time left, none starts after the deadline."""

    def __init__(self, sock: socket.socket, clock: _Clock) -> None:
        super().__init__()
        self.sock, self.clock = sock, clock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.sock.settimeout(self.clock.budget())
        return self.sock.recv_into(buffer)

    def makefile(self, mode: str) -> io.BufferedReader:
        """What ``http.client.HTTPResponse`` reads the status line, headers and body from."""
        return io.BufferedReader(self)


class Fetcher:
    """Fetches image URLs under a ``FetchPolicy``; ``download_with_retry`` has img2dataset's signature."""

    def __init__(self, policy: FetchPolicy, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: the context for https (default: the system's trusted CAs, hostname checked)."""
        from img2dataset.downloader import is_disallowed  # img2dataset's own X-Robots-Tag parsing

        self.policy, self._is_disallowed = policy, is_disallowed
        token = (policy.user_agent_token or "").strip().lower() or None
        self._token = token
        self._directives = {d.strip().lower() for d in policy.disallowed_header_directives}
        # img2dataset's user agent, with the token sites name in their X-Robots-Tag directives
        self.user_agent = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0" + (
            f" (compatible; {token}; +https://github.com/rom1504/img2dataset)" if token else "")
        self._tls = tls or ssl.create_default_context()
        self._allowed = frozenset(h.strip().lower() for h in policy.allow_hosts)

    def allows(self, host: str, port: int) -> bool:
        """True when ``host`` or ``host:port`` is on ``allow_hosts``, which exempts it from the address check."""
        shown = f"[{host}]" if ":" in host else host
        return bool({host, shown, f"{shown}:{port}"} & self._allowed)

    def download_with_retry(self, row: tuple[Any, str], timeout: Any = None, retries: int = 0,
                            user_agent_token: Any = None, disallowed_header_directives: Any = None,
                            ) -> tuple[Any, io.BytesIO | None, str | None]:
        """img2dataset's ``download_image_with_retry``: ``(key, bytes stream, None)`` or ``(key, None, error)``.

        The policy's timeout, token and directives replace img2dataset's arguments of the same names; ``retries``
        applies to transient causes (``RETRIED``) only, all attempts within the URL's one deadline.
        """
        key, url = row
        clock, error = _Clock(self.policy), "other_error: not attempted"
        for _ in range(retries + 1):
            try:
                return key, io.BytesIO(self.fetch(url, clock)), None
            except FetchFailed as exc:
                error = str(exc)
                if exc.cause not in RETRIED:
                    break
        return key, None, error

    def fetch(self, url: str, clock: _Clock | None = None) -> bytes:
        """The body of ``url`` after at most ``MAX_REDIRECTS`` checked redirects; ``FetchFailed`` otherwise."""
        clock = clock or _Clock(self.policy)
        for hop in range(MAX_REDIRECTS + 1):
            try:
                status, location, body = self._get(url, hop, clock)
            except FetchFailed:
                raise
            except Exception as exc:  # noqa: BLE001 (every failure of one URL becomes a counted cause)
                raise _failure(exc, clock) from None
            if location is None:
                return body
            url = urljoin(url, location)
        raise FetchFailed(HTTP_ERROR, f"more than {MAX_REDIRECTS} redirects")

    def _get(self, url: str, hop: int, clock: _Clock) -> tuple[int, str | None, bytes]:
        """One request: ``(status, redirect location or None, body)``; the body only for a 2xx answer."""
        scheme, host, port, target = _parse(url)
        addresses = self._resolve(host, port, hop)
        sock = _connect(addresses, clock)
        try:
            if scheme == "https":
                sock.settimeout(clock.budget())
                sock = self._tls.wrap_socket(sock, server_hostname=host)
            shown = f"[{host}]" if ":" in host else host
            host_header = shown if port == DEFAULT_PORTS[scheme] else f"{shown}:{port}"
            sock.settimeout(clock.budget())
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {self.user_agent}\r\n"
                         "Accept-Encoding: identity\r\nConnection: close\r\n\r\n".encode("ascii"))
            response = http.client.HTTPResponse(_BoundedSocketIO(sock, clock), method="GET")  # type: ignore[arg-type]
            response.begin()
            if response.status in REDIRECTS and (location := response.getheader("Location")):
                return response.status, location, b""
            if not 200 <= response.status < 300:
                raise FetchFailed(DEAD_URL if response.status in (404, 410) else HTTP_ERROR,
                                  f"HTTP Error {response.status}{_phrase(response.status)}")
            self._check_opt_out(response.headers)
            return response.status, None, self._read_body(response)
        finally:
            sock.close()

    def _resolve(self, host: str, port: int, hop: int) -> list[tuple[int, Any]]:
        """The addresses to connect to, each checked (unless the host is allow-listed); resolved once."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            raise FetchFailed(NETWORK_ERROR, "host name not resolved" if hop == 0 else
                              f"redirect {hop}: host name not resolved") from None
        if not self.allows(host, port):
            for *_, sockaddr in infos:
                ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # an IPv6 zone id is not an address
                if (problem := address_problem(ip)) is not None:
                    where = f"{host} resolves to {ip}" if hop == 0 else f"redirect {hop} leads to a non-public address"
                    raise FetchFailed(REFUSED_HOST, f"{where} ({problem}); not on data.download.allow_hosts")
        return [(family, sockaddr) for family, _, _, _, sockaddr in infos]

    def _check_opt_out(self, headers: Message) -> None:
        if self._directives and self._is_disallowed(headers, self._token, self._directives):
            raise FetchFailed(OPTED_OUT, "an X-Robots-Tag directive disallows this use")

    def _read_body(self, response: http.client.HTTPResponse) -> bytes:
        """At most ``max_bytes``: a larger Content-Length is refused unread, a longer body when the cap is passed."""
        cap = self.policy.max_bytes
        if response.length is not None:
            if response.length > cap:
                raise FetchFailed(TOO_LARGE, f"Content-Length {response.length} over max_bytes={cap}")
            return response.read()
        parts, size = [], 0  # chunked or ended by close: read in pieces, never a cap-sized buffer up front
        while chunk := response.read(_CHUNK):
            parts.append(chunk)
            size += len(chunk)
            if size > cap:
                raise FetchFailed(TOO_LARGE, f"body over max_bytes={cap}")
        return b"".join(parts)


def _phrase(status: int) -> str:
    """Python's reason phrase for ``status`` (``": Not Found"``), never the server's."""
    try:
        return f": {HTTPStatus(status).phrase}"
    except ValueError:
        return ""


def _parse(url: str) -> tuple[str, str, int, str]:
    """``(scheme, ASCII host, port, request target)`` of an http(s) URL; ``FetchFailed`` for anything else."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise FetchFailed(REFUSED_SCHEME, f"{scheme + ':' if scheme else 'a URL without a'} scheme; "
                                          "only http and https are fetched")
    host = parts.hostname or ""
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    if not _HOST.fullmatch(host):
        raise FetchFailed(OTHER, "invalid URL: no usable host")
    port = parts.port or DEFAULT_PORTS[scheme]
    target = quote(parts.path or "/", safe=_TARGET_SAFE) + (f"?{quote(parts.query, safe=_TARGET_SAFE)}"
                                                             if parts.query else "")
    return scheme, host, port, target


def _connect(addresses: Iterable[tuple[int, Any]], clock: _Clock) -> socket.socket:
    """A TCP connection to the first of ``addresses`` (all checked) that answers."""
    error: OSError = OSError("no address")
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(clock.budget())
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    raise error


_MAPPED: tuple[tuple[type[BaseException], Callable[[BaseException], str]], ...] = (
    (ssl.SSLError, lambda e: f"TLS: {getattr(e, 'reason', None) or type(e).__name__}"),
    (http.client.HTTPException, lambda e: f"malformed or truncated HTTP response ({type(e).__name__})"),
    (OSError, lambda e: f"{type(e).__name__}: {getattr(e, 'strerror', None) or 'connection failed'}"),
)


def _failure(exc: Exception, clock: _Clock) -> FetchFailed:
    """``exc`` as a counted cause, its text made of types and OS strings only (never response bytes)."""
    if isinstance(exc, TimeoutError):
        if clock.capped:
            return FetchFailed(DEADLINE, f"not fetched within deadline_s={clock.policy.deadline_s:g}")
        return FetchFailed(NETWORK_ERROR, f"timed out (timeout_s={clock.policy.timeout_s:g})")
    for kind, text in _MAPPED:
        if isinstance(exc, kind):
            return FetchFailed(NETWORK_ERROR, text(exc))
    if isinstance(exc, (ValueError, UnicodeError)):
        return FetchFailed(OTHER, f"invalid URL ({type(exc).__name__})")
    return FetchFailed(OTHER, type(exc).__name__)

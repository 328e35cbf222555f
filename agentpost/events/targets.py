"""
Where webhooks may go, and the one way they are sent.

An org chooses the URL, so a careless check would let it make our servers call
their own network: the cloud metadata service, a database on a private address,
an admin port on loopback. A URL is checked when an endpoint is saved and again
before every attempt, because the name's DNS answer can change in between. The
request then connects to the very address that was checked (the Host header and
TLS server name still carry the name), so a second DNS answer can never be used.

Redirects are not followed (each hop would need the same checks) and at most
``RESPONSE_EXCERPT_BYTES`` of an answer is read.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import certifi
import urllib3
from django.conf import settings

CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 15.0
# The whole answer must arrive within this, however slowly it trickles in.
TOTAL_TIMEOUT_SECONDS = 30.0
RESPONSE_EXCERPT_BYTES = 4096
URL_MAX_LENGTH = 2048
USER_AGENT = "AgentPost-Webhooks/1.0"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance metadata services of the large clouds. Most already fall in a refused
# class; they are named so the error says what was hit.
METADATA_ADDRESSES = {
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
}
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class UnsafeTarget(Exception):
    """The URL may not be called; the message says why, for the org to read."""


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64)."""
    if address.version != 6:
        return None
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    if any(address in network for network in NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal_reason(address: IPAddress, *, allow_loopback: bool) -> str | None:
    """Return why ``address`` may not be called, or None if it may."""
    if embedded := _embedded_ipv4(address):
        address = embedded
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        if allow_loopback:
            return None
        return (
            "a loopback address (allowed only with WEBHOOKS_ALLOW_PRIVATE_TARGETS=true)"
        )
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_link_local:
        return "a link-local address"
    if address.version == 4 and address in CGNAT:
        return "a carrier-grade NAT address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


@dataclass(frozen=True)
class Target:
    """A checked URL, split into what the connection needs."""

    scheme: str
    host: str  # the name as sent in Host and SNI (IDNA-encoded)
    port: int
    path: str  # path and query

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_url(url: str) -> Target:
    """Split a webhook URL, refusing what can never be a valid target."""
    if len(url) > URL_MAX_LENGTH:
        raise UnsafeTarget(f"The URL is longer than {URL_MAX_LENGTH} characters.")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise UnsafeTarget("The URL may not contain spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeTarget("The URL is not valid.") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeTarget("The URL must start with https:// or http://.")
    if parts.username is not None or parts.password is not None:
        raise UnsafeTarget("The URL may not contain a user name or password.")
    if not parts.hostname:
        raise UnsafeTarget("The URL has no host.")
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise UnsafeTarget("The URL's host name is not valid.") from None
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(
        scheme=scheme,
        host=host,
        port=port or (443 if scheme == "https" else 80),
        path=path,
    )


def _getaddrinfo(host: str, port: int) -> list:
    # A seam for tests, which must never depend on real DNS.
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def resolve(target: Target) -> list[IPAddress]:
    """Return every address the target's host resolves to, all of them allowed.

    One refused address refuses the URL: a name that answers with both a public
    and a private address could be steered to either.
    """
    try:
        literal = ipaddress.ip_address(target.host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = _getaddrinfo(target.host, target.port)
        except (socket.gaierror, UnicodeError):
            raise UnsafeTarget(
                f"The host name {target.host!r} does not resolve."
            ) from None
        addresses = []
        for info in infos:
            # Strip an IPv6 zone (fe80::1%eth0): the zone is not part of the check.
            address = ipaddress.ip_address(info[4][0].split("%")[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise UnsafeTarget(f"The host name {target.host!r} does not resolve.")

    allow_loopback = settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS
    for address in addresses:
        if reason := refusal_reason(address, allow_loopback=allow_loopback):
            raise UnsafeTarget(
                f"The URL's host {target.host} resolves to {address}, {reason}; "
                "webhooks must go to a public address."
            )
    return addresses


def check_url(url: str) -> Target:
    """Parse and resolve ``url``; raise UnsafeTarget if it may not be called."""
    target = parse_url(url)
    resolve(target)
    return target


@dataclass
class Response:
    status_code: int | None = None
    excerpt: str = ""
    latency_ms: int = 0
    error: str = ""


def _pool(target: Target, address: IPAddress) -> urllib3.HTTPConnectionPool:
    timeout = urllib3.Timeout(
        connect=CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS
    )
    if target.scheme == "https":
        # Connect to the checked address, but present and verify the name.
        return urllib3.HTTPSConnectionPool(
            str(address),
            target.port,
            timeout=timeout,
            retries=False,
            maxsize=1,
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            server_hostname=target.host,
            assert_hostname=target.host,
        )
    return urllib3.HTTPConnectionPool(
        str(address), target.port, timeout=timeout, retries=False, maxsize=1
    )


def post(*, url: str, body: bytes, headers: dict[str, str]) -> Response:
    """POST ``body`` to ``url`` after checking where it goes; never raises.

    Redirects are answers, not instructions: a 3xx is recorded as a failure.
    """
    started = time.monotonic()
    result = Response()
    try:
        target = parse_url(url)
        address = resolve(target)[0]
    except UnsafeTarget as exc:
        result.error = f"refused: {exc}"
        return result

    pool = _pool(target, address)
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers={
                **headers,
                "Host": target.host_header,
                "User-Agent": USER_AGENT,
                "Accept-Encoding": "identity",
                "Content-Length": str(len(body)),
            },
            redirect=False,
            retries=False,
            assert_same_host=False,
            preload_content=False,
            decode_content=False,
        )
        result.status_code = response.status
        result.excerpt = _text(_read_excerpt(response, started))
        response.close()
    except urllib3.exceptions.NewConnectionError as exc:
        # Checked first: urllib3 makes it a subclass of ConnectTimeoutError.
        result.error = _describe(exc)
    except urllib3.exceptions.ConnectTimeoutError:
        result.error = f"connect timeout after {CONNECT_TIMEOUT_SECONDS:g}s"
    except urllib3.exceptions.ReadTimeoutError:
        result.error = f"read timeout after {READ_TIMEOUT_SECONDS:g}s"
    except urllib3.exceptions.HTTPError as exc:
        result.error = _describe(exc)
    except OSError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        pool.close()
        result.latency_ms = int((time.monotonic() - started) * 1000)
    if result.status_code and 300 <= result.status_code < 400 and not result.error:
        result.error = "redirect not followed"
    return result


def _read_excerpt(response, started: float) -> bytes:
    """Read at most RESPONSE_EXCERPT_BYTES, giving up at the total deadline."""
    chunks: list[bytes] = []
    size = 0
    while size < RESPONSE_EXCERPT_BYTES:
        if time.monotonic() - started > TOTAL_TIMEOUT_SECONDS:
            break
        chunk = response.read1(RESPONSE_EXCERPT_BYTES - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _text(raw: bytes) -> str:
    # Any bytes may come back; PostgreSQL text columns refuse NUL.
    return raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def _describe(exc: Exception) -> str:
    # urllib3 wraps the cause; the innermost reason reads best ("Connection
    # refused") and never contains a secret, as none is in the URL or headers
    # beyond the signature.
    reason = getattr(exc, "reason", None) or exc
    return f"{type(reason).__name__}: {reason}"[:500].replace("\x00", "")

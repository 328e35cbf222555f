"""
A real HTTP receiver on loopback for webhook tests.

It verifies every request's signature with the independent ``standardwebhooks``
package, using the secrets the test hands it, and answers as the test scripts
it: a status, a delay, a redirect, a large body.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Reply:
    status: int = 204
    body: bytes = b""
    delay: float = 0.0
    headers: dict = field(default_factory=dict)


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes
    # The parsed payload if any of the receiver's secrets verified it, else None.
    verified: dict | None
    verified_with: list[str]


class Receiver:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Received] = []
        self.replies: list[Reply] = []
        self.secrets: list[str] = []
        self.stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        if tls:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), daemon=True
        )

    def url(self, path: str = "/hook") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def reply(self, *replies: Reply) -> None:
        """Answer the next requests with these, in order; then 204."""
        self.replies.extend(replies)

    def verified_ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.requests if r.verified]

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified, verified_with = None, []
                for secret in receiver.secrets:
                    try:
                        verified = Webhook(secret).verify(body, headers)
                        verified_with.append(secret)
                    except WebhookVerificationError:
                        pass
                receiver.requests.append(
                    Received(self.path, headers, body, verified, verified_with)
                )
                reply = receiver.replies.pop(0) if receiver.replies else Reply()
                if reply.delay:
                    receiver.stop.wait(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args) -> None:
                pass

        return Handler


@pytest.fixture
def receiver():
    receiver = Receiver()
    receiver.thread.start()
    yield receiver
    receiver.stop.set()
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def allow_loopback(settings):
    settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS = True


@pytest.fixture
def fast_timeouts(monkeypatch):
    from agentpost.events import targets

    monkeypatch.setattr(targets, "CONNECT_TIMEOUT_SECONDS", 1.0)
    monkeypatch.setattr(targets, "READ_TIMEOUT_SECONDS", 0.3)


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


class FakeDNS:
    """Stands in for DNS: names resolve only to what a test put here."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {}
        self.lookups: list[str] = []

    def getaddrinfo(self, host: str, port: int) -> list:
        self.lookups.append(host)
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port, 0, 0) if ":" in a else (a, port),
            )
            for a in self.names[host]
        ]


@pytest.fixture(autouse=True)
def dns(monkeypatch):
    """No test here uses real DNS, and none may connect beyond loopback."""
    from agentpost.events import targets

    fake = FakeDNS()
    monkeypatch.setattr(targets, "_getaddrinfo", fake.getaddrinfo)

    real_pool = targets._pool

    def loopback_only_pool(target, address):
        if not address.is_loopback:
            raise AssertionError(f"a test tried to connect to {address}")
        return real_pool(target, address)

    monkeypatch.setattr(targets, "_pool", loopback_only_pool)
    return fake

"""
An HTTP server that answers like the parts of the Stripe API AgentPost calls.

The real ``stripe`` library talks to it over HTTP (``STRIPE_API_BASE``), so
requests, headers, form encoding, idempotency keys and errors all take the real
path. Routes under ``/_standin/`` are test controls: they play what a customer or
Stripe's scheduler would do, and answer with the events Stripe would send. With
``webhook_url`` and ``webhook_secret`` set, the server also posts those events,
signed, as Stripe does.

Loopback only; nothing here is reachable from outside the machine.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import re
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from billing.standin.state import StandinState, StripeError

logger = logging.getLogger(__name__)

DEFAULT_EVENT_VERSION = "2025-08-27.basil"


CHECKOUT_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<title>Checkout (Stripe stand-in)</title></head>
<body style="font-family: sans-serif; max-width: 420px; margin: 60px auto;">
<p><small>Stripe stand-in: no real payment is taken.</small></p>
<h1>Subscribe to {name}</h1><p>${amount:.2f} a month</p>
<form method="post"><button type="submit" id="pay">Pay and subscribe</button></form>
<p><a href="{cancel}">Cancel</a></p></body></html>"""

PORTAL_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<title>Billing portal (Stripe stand-in)</title></head>
<body style="font-family: sans-serif; max-width: 420px; margin: 60px auto;">
<h1>Billing portal</h1><p>Stripe stand-in: payment methods are not kept here.</p>
<p><a href="{back}">Back to AgentPost</a></p></body></html>"""


def parse_form(body: str) -> dict:
    """Decode Stripe's bracketed form encoding (``items[0][price]=x``) into dicts."""
    root: dict = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+|\[\]", key)
        node = root
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if last:
                if part == "[]":
                    node.setdefault("__list__", []).append(value)
                else:
                    node[part] = value
            else:
                node = node.setdefault(part, {})
    return _lists(root)


def _lists(node):
    if not isinstance(node, dict):
        return node
    if "__list__" in node:
        return node["__list__"]
    if node and all(k.isdigit() for k in node):
        return [_lists(node[k]) for k in sorted(node, key=int)]
    return {k: _lists(v) for k, v in node.items()}


def sign_payload(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """Return a ``Stripe-Signature`` header value for ``payload``."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{timestamp}.".encode() + payload
    signature = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={signature}"


class StandinServer:
    """The stand-in on a loopback port, in a background thread."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        state: StandinState | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        event_version: str = DEFAULT_EVENT_VERSION,
    ) -> None:
        self.state = state or StandinState()
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.event_version = event_version
        self.outbox: list[dict] = []
        self.outbox_ready = threading.Condition()
        self.delivering = False
        self.stopping = False
        self.poster = threading.Thread(target=self._deliver_forever, daemon=True)
        handler = type("Handler", (_Handler,), {"standin": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.state.page_base = self.url

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StandinServer:
        self.thread.start()
        self.poster.start()
        return self

    def stop(self) -> None:
        with self.outbox_ready:
            self.stopping = True
            self.outbox_ready.notify_all()
        self.poster.join(timeout=5)
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def emit(self, changes: list[tuple[str, dict]], version: str | None) -> list[dict]:
        """Record the events of these changes and queue them for the webhook."""
        events = [
            self.state.make_event(kind, obj, version or self.event_version)
            for kind, obj in changes
        ]
        if self.webhook_url and self.webhook_secret:
            with self.outbox_ready:
                self.outbox.extend(events)
                self.outbox_ready.notify_all()
        return events

    def wait_delivered(self, timeout: float = 60) -> None:
        """Wait until every queued event has been posted to the webhook."""
        with self.outbox_ready:
            self.outbox_ready.wait_for(
                lambda: not self.outbox and not self.delivering, timeout=timeout
            )

    def _deliver_forever(self) -> None:
        # One poster, so events reach the app one at a time and in order. It
        # runs apart from the request handlers because the app answers a
        # webhook by calling back here.
        while True:
            with self.outbox_ready:
                self.outbox_ready.wait_for(lambda: self.outbox or self.stopping)
                if self.stopping:
                    return
                event = self.outbox.pop(0)
                self.delivering = True
            try:
                self.deliver(event)
            finally:
                with self.outbox_ready:
                    self.delivering = False
                    self.outbox_ready.notify_all()

    def deliver(self, event: dict) -> None:
        payload = json.dumps(event).encode()
        request = urllib.request.Request(
            self.webhook_url,
            data=payload,
            headers={
                "Content-Type": "application/json",
                "Stripe-Signature": sign_payload(payload, self.webhook_secret),
            },
        )
        try:
            urllib.request.urlopen(request, timeout=10).read()
        except Exception:
            logger.warning("stand-in webhook delivery failed event=%s", event["id"])


class _Handler(BaseHTTPRequestHandler):
    standin: StandinServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Answer at once: without this, Nagle and delayed ACKs add 40 ms a call.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args) -> None:  # noqa: A002 (stdlib's name)
        logger.debug("stand-in %s", format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", f"req_standin_{int(time.time() * 1000)}")
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        params = parse_form(split.query if method != "POST" else body)
        if method == "POST" and split.query:
            params.update(parse_form(split.query))
        version = self.headers.get("Stripe-Version")
        state = self.standin.state

        if split.path.startswith(("/c/pay/", "/p/session/")):
            self._page(method, split.path)
            return
        if not split.path.startswith("/_standin/"):
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer sk_"):
                self._send(
                    401,
                    {
                        "error": {
                            "type": "invalid_request_error",
                            "message": "Invalid API Key provided.",
                        }
                    },
                )
                return

        with state.lock:
            key = self.headers.get("Idempotency-Key")
            cache_key = (
                f"{method} {split.path} {key}" if key and method == "POST" else None
            )
            if cache_key and cache_key in state.idempotent:
                status, result = state.idempotent[cache_key]
                self._send(status, result)
                return
            try:
                if state.fail_next and not split.path.startswith("/_standin/"):
                    raise state.fail_next.pop(0)
                result = self._route(method, split.path, params, version)
                status = 200
            except StripeError as error:
                status, result = error.status, error.body()
            except (KeyError, ValueError, TypeError) as error:
                status = 400
                result = StripeError(400, f"Invalid request: {error}").body()
            if cache_key:
                state.idempotent[cache_key] = (status, result)
        if split.path.startswith("/_standin/"):
            # A control call returns once the app has been told, so the caller
            # (a test, a demo script) sees the outcome.
            self.standin.wait_delivered()
        self._send(status, result)

    def _page(self, method: str, path: str) -> None:
        """The customer's side: a checkout page with a Pay button, and the portal."""
        state = self.standin.state
        kind, session_id = path.rsplit("/", 1)
        with state.lock:
            try:
                if kind == "/c/pay" and method == "POST":
                    session = state.get("checkout.session", session_id)
                    self.standin.emit(state.complete_checkout(session_id), None)
                    redirect_to = session["success_url"]
                if kind == "/c/pay":
                    session = state.get("checkout.session", session_id)
                    price = state.get("price", session["line_items_params"][0]["price"])
                    body = CHECKOUT_PAGE.format(
                        name=html.escape(price.get("nickname") or price["id"]),
                        amount=price["unit_amount"] / 100,
                        cancel=html.escape(session["cancel_url"] or "/"),
                    )
                else:
                    portal = state.get("billing_portal.session", session_id)
                    body = PORTAL_PAGE.format(
                        back=html.escape(portal["return_url"] or "/")
                    )
            except StripeError as error:
                self._send(error.status, error.body())
                return
        if method == "POST":
            # Like Stripe, tell the app before the customer is sent back to it.
            self.standin.wait_delivered()
            self._redirect(redirect_to)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _redirect(self, url: str) -> None:
        self.send_response(303)
        self.send_header("Location", url)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _route(self, method: str, path: str, params: dict, version: str | None) -> dict:
        state = self.standin.state
        render = lambda obj: state.render(obj, version)  # noqa: E731
        parts = path.strip("/").split("/")

        if parts[0] == "_standin":
            return self._control(method, parts[1:], params)
        if parts[0] != "v1":
            raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")
        route = "/".join(parts[1:])

        if route == "account" and method == "GET":
            return {
                "id": "acct_standin",
                "object": "account",
                "country": "US",
                "default_currency": "usd",
                "email": "billing@agentpost.test",
                "settings": {"dashboard": {"display_name": "AgentPost (stand-in)"}},
            }
        if route == "customers" and method == "POST":
            return render(state.create_customer(params))
        if m := re.fullmatch(r"customers/([^/]+)", route):
            if method == "GET":
                return render(state.get("customer", m[1]))
            if method == "POST":
                return render(state.update("customer", m[1], params))
        if route == "products":
            if method == "POST":
                return render(state.create_product(params))
            return render(state.list("product", params))
        if re.fullmatch(r"products/([^/]+)/features", route):
            return {
                "object": "list",
                "data": [],
                "has_more": False,
                "url": f"/v1/{route}",
            }
        if m := re.fullmatch(r"products/([^/]+)", route):
            if method == "GET":
                return render(state.get("product", m[1]))
            return render(state.update("product", m[1], params))
        if route == "prices":
            if method == "POST":
                return render(state.create_price(params))
            keys = set(params.get("lookup_keys") or [])
            return render(
                state.list(
                    "price",
                    params,
                    lambda p: (
                        (not keys or p.get("lookup_key") in keys)
                        and (params.get("product") in (None, p["product"]))
                    ),
                )
            )
        if m := re.fullmatch(r"prices/([^/]+)", route):
            if method == "GET":
                return render(state.get("price", m[1]))
            return render(state.update("price", m[1], params))
        if route == "checkout/sessions" and method == "POST":
            return render(state.create_checkout_session(params))
        if m := re.fullmatch(r"checkout/sessions/([^/]+)", route):
            return render(state.get("checkout.session", m[1]))
        if route == "billing_portal/sessions" and method == "POST":
            return render(state.create_portal_session(params))
        if route == "subscriptions" and method == "GET":
            return render(
                state.list(
                    "subscription",
                    params,
                    lambda s: (
                        params.get("customer") in (None, s["customer"])
                        and (params.get("status") in (None, "all", s["status"]))
                    ),
                )
            )
        if m := re.fullmatch(r"subscriptions/([^/]+)", route):
            if method == "GET":
                return render(state.get("subscription", m[1]))
            if method == "DELETE":
                sub = state.cancel_subscription(m[1])
                self.standin.emit([("customer.subscription.deleted", sub)], None)
                return render(sub)
            sub, invoice = state.update_subscription(m[1], params)
            changes = [("customer.subscription.updated", sub)]
            if invoice:
                changes += [
                    ("invoice.paid", invoice),
                    ("invoice.payment_succeeded", invoice),
                ]
            self.standin.emit(changes, None)
            return render(sub)
        if route == "invoices" and method == "GET":
            return render(
                state.list(
                    "invoice",
                    params,
                    lambda i: params.get("customer") in (None, i["customer"]),
                )
            )
        if route == "invoices/create_preview" and method == "POST":
            return render(state.preview_invoice(params))
        if m := re.fullmatch(r"invoices/([^/]+)", route):
            return render(state.get("invoice", m[1]))
        if m := re.fullmatch(r"events/([^/]+)", route):
            return state.get("event", m[1])
        raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")

    def _control(self, method: str, parts: list[str], params: dict) -> dict:
        """Test controls: what customers and Stripe's scheduler would do."""
        standin, state = self.standin, self.standin.state
        version = params.get("version")
        match parts:
            case ["checkout", session_id, "complete"]:
                changes = state.complete_checkout(session_id)
            case ["subscriptions", sub_id, "renew"]:
                changes = state.renew(sub_id, pay=params.get("pay", "true") == "true")
            case ["invoices", invoice_id, "fail"]:
                changes = state.fail_retry(
                    invoice_id, final=params.get("final") == "true"
                )
            case ["invoices", invoice_id, "pay"]:
                changes = state.pay_invoice(invoice_id)
            case ["seed"]:
                obj = state.seed(json.loads(params["object"]))
                return {"seeded": obj["id"]}
            case _:
                raise StripeError(404, "Unknown stand-in control.")
        return {"events": standin.emit(changes, version)}

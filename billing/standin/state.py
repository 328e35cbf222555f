"""
The state of the Stripe stand-in: customers, products, prices, subscriptions,
invoices, checkout and portal sessions, kept in memory.

Objects are kept in the newest shape (the billing period on subscription items,
an invoice's subscription under ``parent.subscription_details``) and rendered in
the shape of the API version each request asks for, as Stripe does. Test-control
operations (complete a checkout, fail or pay an invoice, renew a period) change
the state and return the events Stripe would send.
"""

from __future__ import annotations

import copy
import itertools
import secrets
import threading
import time
from typing import Any

# Versions before this one have the old shapes.
BASIL = "2025-03-31.basil"
MONTH_SECONDS = 30 * 24 * 3600
YEAR_SECONDS = 365 * 24 * 3600


class StripeError(Exception):
    def __init__(
        self, status: int, message: str, code: str = "", param: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def body(self) -> dict:
        error = {"type": "invalid_request_error", "message": self.message}
        if self.code:
            error["code"] = self.code
        if self.param:
            error["param"] = self.param
        return {"error": error}


def missing(kind: str, object_id: str) -> StripeError:
    return StripeError(
        404, f"No such {kind}: '{object_id}'", code="resource_missing", param="id"
    )


def is_old_version(version: str | None) -> bool:
    return bool(version) and version < BASIL


class StandinState:
    def __init__(self, *, clock=time.time) -> None:
        # Where the stand-in's own pages (checkout, portal) are served; set by
        # the server once it knows its address.
        self.page_base = "https://checkout.stripe.test"
        self.lock = threading.RLock()
        self.clock = clock
        self.objects: dict[str, dict[str, dict]] = {
            kind: {}
            for kind in (
                "customer",
                "product",
                "price",
                "subscription",
                "invoice",
                "checkout.session",
                "billing_portal.session",
                "event",
            )
        }
        self.idempotent: dict[str, tuple[int, Any]] = {}
        self._seq = itertools.count(1)
        self.fail_next: list[StripeError] = []

    # Helpers

    def now(self) -> int:
        return int(self.clock())

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._seq):06d}{secrets.token_hex(6)}"

    def get(self, kind: str, object_id: str) -> dict:
        try:
            return self.objects[kind][object_id]
        except KeyError:
            raise missing(kind.replace("_", " "), object_id) from None

    def put(self, obj: dict) -> dict:
        self.objects[obj["object"]][obj["id"]] = obj
        return obj

    def seed(self, obj: dict) -> dict:
        """Store an object given in either shape, normalised to the newest one."""
        obj = copy.deepcopy(obj)
        if obj["object"] == "subscription":
            period = (obj.get("current_period_start"), obj.get("current_period_end"))
            for item in obj.get("items", {}).get("data", []):
                if period[0] and not item.get("current_period_start"):
                    item["current_period_start"], item["current_period_end"] = period
            for key in (
                "current_period_start",
                "current_period_end",
                "plan",
                "quantity",
            ):
                obj.pop(key, None)
        if obj["object"] == "invoice":
            sub = obj.pop("subscription", None)
            if sub and not obj.get("parent"):
                obj["parent"] = _invoice_parent(sub)
            for key in ("paid", "charge", "payment_intent"):
                obj.pop(key, None)
        return self.put(obj)

    # Rendering in the requested version's shape

    def render(self, obj: dict, version: str | None) -> dict:
        obj = copy.deepcopy(obj)
        if obj.get("object") == "list":
            obj["data"] = [self.render(o, version) for o in obj["data"]]
            return obj
        if not is_old_version(version):
            return obj
        if obj["object"] == "subscription":
            items = obj.get("items", {}).get("data", [])
            if items:
                obj["current_period_start"] = items[0].get("current_period_start")
                obj["current_period_end"] = items[0].get("current_period_end")
                obj["plan"] = (
                    _plan_from_price(items[0]["price"]) if len(items) == 1 else None
                )
                obj["quantity"] = (
                    items[0].get("quantity", 1) if len(items) == 1 else None
                )
        if obj["object"] == "invoice":
            parent = obj.pop("parent", None) or {}
            details = parent.get("subscription_details") or {}
            obj["subscription"] = details.get("subscription")
            obj["paid"] = obj["status"] == "paid"
            obj["charge"] = None
            obj["payment_intent"] = None
        return obj

    # Customers, products, prices

    def create_customer(self, params: dict) -> dict:
        return self.put(
            {
                "id": self.new_id("cus"),
                "object": "customer",
                "created": self.now(),
                "email": params.get("email"),
                "name": params.get("name"),
                "description": params.get("description"),
                "metadata": params.get("metadata", {}),
                "livemode": False,
                "balance": 0,
                "currency": "usd",
                "delinquent": False,
                "invoice_settings": {"default_payment_method": None},
            }
        )

    def update(self, kind: str, object_id: str, params: dict) -> dict:
        obj = self.get(kind, object_id)
        for key, value in params.items():
            if key == "metadata":
                obj.setdefault("metadata", {}).update(value or {})
            elif key not in ("expand", "transfer_lookup_key"):
                obj[key] = value
        return obj

    def create_product(self, params: dict) -> dict:
        return self.put(
            {
                "id": params.get("id") or self.new_id("prod"),
                "object": "product",
                "active": True,
                "created": self.now(),
                "name": params["name"],
                "description": params.get("description"),
                "metadata": params.get("metadata", {}),
                "livemode": False,
                "type": "service",
            }
        )

    def create_price(self, params: dict) -> dict:
        lookup_key = params.get("lookup_key")
        if lookup_key:
            for price in self.objects["price"].values():
                if price.get("lookup_key") == lookup_key:
                    if params.get("transfer_lookup_key") not in ("true", True):
                        raise StripeError(
                            400,
                            f"A price with lookup key {lookup_key} already exists.",
                            param="lookup_key",
                        )
                    price["lookup_key"] = None
        self.get("product", params["product"])
        recurring = params.get("recurring") or {}
        return self.put(
            {
                "id": self.new_id("price"),
                "object": "price",
                "active": True,
                "created": self.now(),
                "currency": params.get("currency", "usd"),
                "lookup_key": lookup_key,
                "metadata": params.get("metadata", {}),
                "nickname": params.get("nickname"),
                "product": params["product"],
                "recurring": {
                    "interval": recurring.get("interval", "month"),
                    "interval_count": int(recurring.get("interval_count", 1)),
                    "usage_type": "licensed",
                },
                "type": "recurring",
                "unit_amount": int(params["unit_amount"]),
                "livemode": False,
                "billing_scheme": "per_unit",
                "tax_behavior": "unspecified",
            }
        )

    def list(self, kind: str, params: dict, predicate=lambda o: True) -> dict:
        rows = sorted(
            (o for o in self.objects[kind].values() if predicate(o)),
            key=lambda o: (o.get("created", 0), o["id"]),
            reverse=True,
        )
        if after := params.get("starting_after"):
            ids = [o["id"] for o in rows]
            rows = rows[ids.index(after) + 1 :] if after in ids else []
        limit = int(params.get("limit", 10))
        return {
            "object": "list",
            "url": f"/v1/{kind}s",
            "has_more": len(rows) > limit,
            "data": rows[:limit],
        }

    # Checkout and portal

    def create_checkout_session(self, params: dict) -> dict:
        if params.get("mode") != "subscription":
            raise StripeError(
                400, "Only subscription mode is supported here.", param="mode"
            )
        customer = params.get("customer")
        if customer:
            self.get("customer", customer)
        items = params.get("line_items") or []
        if not items:
            raise StripeError(400, "line_items is required.", param="line_items")
        for item in items:
            self.get("price", item["price"])
        session_id = self.new_id("cs_test")
        return self.put(
            {
                "id": session_id,
                "object": "checkout.session",
                "mode": "subscription",
                "status": "open",
                "payment_status": "unpaid",
                "customer": customer,
                "client_reference_id": params.get("client_reference_id"),
                "metadata": params.get("metadata", {}),
                "subscription_data": params.get("subscription_data", {}),
                "success_url": params.get("success_url"),
                "cancel_url": params.get("cancel_url"),
                "line_items_params": items,
                "url": f"{self.page_base}/c/pay/{session_id}",
                "created": self.now(),
                "expires_at": self.now() + 24 * 3600,
                "subscription": None,
                "invoice": None,
                "livemode": False,
            }
        )

    def create_portal_session(self, params: dict) -> dict:
        self.get("customer", params["customer"])
        session_id = self.new_id("bps")
        return self.put(
            {
                "id": session_id,
                "object": "billing_portal.session",
                "customer": params["customer"],
                "return_url": params.get("return_url"),
                "url": f"{self.page_base}/p/session/{session_id}",
                "created": self.now(),
                "livemode": False,
            }
        )

    # Subscriptions

    def _item(
        self, price_id: str, start: int, subscription_id: str, quantity=1
    ) -> dict:
        price = self.get("price", price_id)
        length = (
            YEAR_SECONDS if price["recurring"]["interval"] == "year" else MONTH_SECONDS
        )
        return {
            "id": self.new_id("si"),
            "object": "subscription_item",
            "created": start,
            "current_period_start": start,
            "current_period_end": start + length,
            "metadata": {},
            "price": copy.deepcopy(price),
            "quantity": int(quantity),
            "subscription": subscription_id,
        }

    def create_subscription(
        self, *, customer: str, price_ids: list[str], metadata
    ) -> dict:
        now = self.now()
        sub_id = self.new_id("sub")
        sub = self.put(
            {
                "id": sub_id,
                "object": "subscription",
                "customer": customer,
                "status": "active",
                "created": now,
                "start_date": now,
                "billing_cycle_anchor": now,
                "cancel_at_period_end": False,
                "cancel_at": None,
                "canceled_at": None,
                "ended_at": None,
                "collection_method": "charge_automatically",
                "currency": "usd",
                "metadata": metadata or {},
                "items": {
                    "object": "list",
                    "data": [self._item(p, now, sub_id) for p in price_ids],
                    "has_more": False,
                },
                "latest_invoice": None,
                "livemode": False,
                "trial_end": None,
                "trial_start": None,
                "discounts": [],
                "default_payment_method": None,
            }
        )
        return sub

    def update_subscription(
        self, sub_id: str, params: dict
    ) -> tuple[dict, dict | None]:
        """Apply an update; return the subscription and any invoice it created."""
        sub = self.get("subscription", sub_id)
        if sub["status"] == "canceled":
            raise StripeError(
                400, "This subscription is canceled and cannot be updated."
            )
        invoice = None
        if "cancel_at_period_end" in params:
            flag = params["cancel_at_period_end"] in (True, "true")
            sub["cancel_at_period_end"] = flag
            sub["cancel_at"] = (
                sub["items"]["data"][0]["current_period_end"] if flag else None
            )
            sub["canceled_at"] = self.now() if flag else None
        if params.get("metadata"):
            sub.setdefault("metadata", {}).update(params["metadata"])
        if items := params.get("items"):
            change = items[0]
            item = next(
                (i for i in sub["items"]["data"] if i["id"] == change.get("id")), None
            )
            if item is None:
                raise StripeError(
                    400, "No such subscription item.", param="items[0][id]"
                )
            old_price = item["price"]
            new_price = copy.deepcopy(self.get("price", change["price"]))
            proration_date = int(params.get("proration_date") or self.now())
            amount = self.proration_amount(item, old_price, new_price, proration_date)
            item["price"] = new_price
            behavior = params.get("proration_behavior", "create_prorations")
            if behavior == "always_invoice" and amount:
                invoice = self.create_invoice(
                    sub, amount=amount, reason="subscription_update", paid=amount > 0
                )
            elif amount:
                customer = self.get("customer", sub["customer"])
                customer["balance"] = customer.get("balance", 0) + amount
        return sub, invoice

    def cancel_subscription(self, sub_id: str) -> dict:
        sub = self.get("subscription", sub_id)
        now = self.now()
        sub.update(
            status="canceled", canceled_at=now, ended_at=now, cancel_at_period_end=False
        )
        return sub

    def proration_amount(self, item, old_price, new_price, proration_date: int) -> int:
        start, end = item["current_period_start"], item["current_period_end"]
        remaining = max(end - proration_date, 0) / max(end - start, 1)
        return round((new_price["unit_amount"] - old_price["unit_amount"]) * remaining)

    def preview_invoice(self, params: dict) -> dict:
        sub = self.get("subscription", params["subscription"])
        details = params.get("subscription_details") or {}
        changes = details.get("items") or []
        proration_date = int(details.get("proration_date") or self.now())
        lines = []
        total = 0
        for change in changes:
            item = next(i for i in sub["items"]["data"] if i["id"] == change["id"])
            new_price = self.get("price", change["price"])
            amount = self.proration_amount(
                item, item["price"], new_price, proration_date
            )
            total += amount
            lines.append(
                {
                    "object": "line_item",
                    "amount": amount,
                    "description": "Proration to "
                    + (new_price.get("nickname") or new_price["id"]),
                    "parent": {"type": "subscription_item_details"},
                    "pricing": {"price_details": {"price": new_price["id"]}},
                }
            )
        return {
            "id": None,
            "object": "invoice",
            "customer": sub["customer"],
            "parent": _invoice_parent(sub["id"]),
            "status": "draft",
            "amount_due": max(total, 0),
            "total": total,
            "subtotal": total,
            "currency": "usd",
            "period_start": proration_date,
            "period_end": sub["items"]["data"][0]["current_period_end"],
            "created": self.now(),
            "lines": {"object": "list", "data": lines, "has_more": False},
            "livemode": False,
        }

    # Invoices

    def create_invoice(
        self, sub: dict, *, amount: int, reason: str, paid: bool
    ) -> dict:
        now = self.now()
        item = sub["items"]["data"][0]
        number = f"AP-{len(self.objects['invoice']) + 1:04d}"
        invoice_id = self.new_id("in")
        invoice = self.put(
            {
                "id": invoice_id,
                "object": "invoice",
                "customer": sub["customer"],
                "parent": _invoice_parent(sub["id"]),
                "billing_reason": reason,
                "collection_method": sub.get(
                    "collection_method", "charge_automatically"
                ),
                "created": now,
                "currency": "usd",
                "number": number,
                "status": "paid" if paid else "open",
                "amount_due": amount,
                "amount_paid": amount if paid else 0,
                "amount_remaining": 0 if paid else amount,
                "total": amount,
                "subtotal": amount,
                "attempt_count": 1,
                "attempted": True,
                "next_payment_attempt": None if paid else now + 3 * 24 * 3600,
                "period_start": item["current_period_start"],
                "period_end": item["current_period_end"],
                "hosted_invoice_url": f"https://invoice.stripe.test/i/{invoice_id}",
                "invoice_pdf": f"https://pay.stripe.test/invoice/{invoice_id}/pdf",
                "status_transitions": {"paid_at": now if paid else None},
                "lines": {
                    "object": "list",
                    "data": [
                        {
                            "object": "line_item",
                            "amount": amount,
                            "description": item["price"].get("nickname")
                            or "Subscription",
                            "period": {
                                "start": item["current_period_start"],
                                "end": item["current_period_end"],
                            },
                        }
                    ],
                    "has_more": False,
                },
                "livemode": False,
                "metadata": {},
            }
        )
        sub["latest_invoice"] = invoice["id"]
        return invoice

    def complete_checkout(self, session_id: str) -> list[tuple[str, dict]]:
        """The customer paid on the checkout page: subscribe and invoice them."""
        session = self.get("checkout.session", session_id)
        if session["status"] != "open":
            raise StripeError(400, "This checkout session is not open.")
        customer = session["customer"] or self.create_customer({})["id"]
        prices = [i["price"] for i in session["line_items_params"]]
        metadata = (session.get("subscription_data") or {}).get("metadata") or session[
            "metadata"
        ]
        sub = self.create_subscription(
            customer=customer, price_ids=prices, metadata=metadata
        )
        amount = sum(self.get("price", p)["unit_amount"] for p in prices)
        invoice = self.create_invoice(
            sub, amount=amount, reason="subscription_create", paid=True
        )
        session.update(
            status="complete",
            payment_status="paid",
            subscription=sub["id"],
            invoice=invoice["id"],
            customer=customer,
        )
        return [
            ("customer.subscription.created", sub),
            ("invoice.paid", invoice),
            ("invoice.payment_succeeded", invoice),
            ("checkout.session.completed", session),
        ]

    def renew(self, sub_id: str, *, pay: bool) -> list[tuple[str, dict]]:
        """Roll the subscription into its next period and invoice it."""
        sub = self.get("subscription", sub_id)
        events: list[tuple[str, dict]] = []
        if sub["cancel_at_period_end"]:
            self.cancel_subscription(sub_id)
            return [("customer.subscription.deleted", sub)]
        for item in sub["items"]["data"]:
            length = item["current_period_end"] - item["current_period_start"]
            item["current_period_start"] = item["current_period_end"]
            item["current_period_end"] += length
        amount = sum(i["price"]["unit_amount"] for i in sub["items"]["data"])
        invoice = self.create_invoice(
            sub, amount=amount, reason="subscription_cycle", paid=pay
        )
        if pay:
            events += [
                ("invoice.paid", invoice),
                ("invoice.payment_succeeded", invoice),
            ]
        else:
            sub["status"] = "past_due"
            events += [("invoice.payment_failed", invoice)]
        events.insert(0, ("customer.subscription.updated", sub))
        return events

    def fail_retry(self, invoice_id: str, *, final: bool) -> list[tuple[str, dict]]:
        invoice = self.get("invoice", invoice_id)
        invoice["attempt_count"] += 1
        invoice["next_payment_attempt"] = None if final else self.now() + 3 * 24 * 3600
        return [("invoice.payment_failed", invoice)]

    def pay_invoice(self, invoice_id: str) -> list[tuple[str, dict]]:
        invoice = self.get("invoice", invoice_id)
        if invoice["status"] == "paid":
            raise StripeError(400, "Invoice is already paid.")
        now = self.now()
        invoice.update(
            status="paid",
            amount_paid=invoice["amount_due"],
            amount_remaining=0,
            next_payment_attempt=None,
            status_transitions={"paid_at": now},
        )
        events = [("invoice.paid", invoice), ("invoice.payment_succeeded", invoice)]
        sub_id = ((invoice.get("parent") or {}).get("subscription_details") or {}).get(
            "subscription"
        )
        if sub_id and sub_id in self.objects["subscription"]:
            sub = self.objects["subscription"][sub_id]
            if sub["status"] in ("past_due", "unpaid"):
                sub["status"] = "active"
                events.insert(0, ("customer.subscription.updated", sub))
        return events

    def make_event(self, event_type: str, obj: dict, version: str) -> dict:
        event = {
            "id": self.new_id("evt"),
            "object": "event",
            "api_version": version,
            "created": self.now(),
            "type": event_type,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "data": {"object": self.render(obj, version)},
        }
        self.put(event)
        return event


def _invoice_parent(subscription_id: str) -> dict:
    return {
        "type": "subscription_details",
        "quote_details": None,
        "subscription_details": {"metadata": {}, "subscription": subscription_id},
    }


def _plan_from_price(price: dict) -> dict:
    return {
        "id": price["id"],
        "object": "plan",
        "active": price.get("active", True),
        "amount": price["unit_amount"],
        "currency": price["currency"],
        "interval": price["recurring"]["interval"],
        "interval_count": price["recurring"]["interval_count"],
        "nickname": price.get("nickname"),
        "product": price["product"],
        "livemode": False,
    }

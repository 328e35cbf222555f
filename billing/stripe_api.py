"""
Every call AgentPost makes to Stripe goes through this module.

One place to read what we ask of Stripe, to set the pinned API version, the key,
retries and idempotency keys, and to turn Stripe's errors into ours. Tests point
``STRIPE_API_BASE`` at the stand-in (``billing.standin``) and everything below
runs over real HTTP.
"""

from __future__ import annotations

import logging
from typing import Any

import stripe
from django.conf import settings

logger = logging.getLogger("agentpost.billing")

NETWORK_RETRIES = 2


class BillingProviderError(Exception):
    """Stripe refused or could not be reached; ``message`` is safe to show."""

    def __init__(self, message: str, *, status: int = 502, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


def _client_options() -> dict[str, Any]:
    stripe.api_key = settings.STRIPE_SECRET_KEY
    stripe.api_version = settings.STRIPE_API_VERSION
    stripe.max_network_retries = NETWORK_RETRIES
    if settings.STRIPE_API_BASE:
        stripe.api_base = settings.STRIPE_API_BASE
    return {
        "api_key": settings.STRIPE_SECRET_KEY,
        "stripe_version": settings.STRIPE_API_VERSION,
    }


def _call(what: str, function, *args, **kwargs):
    options = _client_options()
    try:
        return function(*args, **options, **kwargs)
    except stripe.InvalidRequestError as error:
        logger.warning("stripe refused call=%s code=%s", what, error.code)
        status = 404 if error.code == "resource_missing" else 400
        raise BillingProviderError(
            "The billing provider refused the request.",
            status=status,
            code=error.code or "",
        ) from None
    except stripe.CardError as error:
        logger.warning("stripe card error call=%s code=%s", what, error.code)
        raise BillingProviderError(
            "The payment method was declined.", status=402, code=error.code or ""
        ) from None
    except stripe.StripeError as error:
        logger.exception("stripe error call=%s type=%s", what, type(error).__name__)
        raise BillingProviderError(
            "The billing provider is unavailable; try again shortly.", status=503
        ) from None


# Customers


def create_customer(*, org_id: str, name: str, email: str) -> stripe.Customer:
    return _call(
        "customer.create",
        stripe.Customer.create,
        name=name,
        email=email or None,
        metadata={"org_id": org_id},
        idempotency_key=f"customer-{org_id}",
    )


# Products and prices


def find_price(*, lookup_key: str) -> stripe.Price | None:
    prices = _call(
        "price.list", stripe.Price.list, lookup_keys=[lookup_key], active=True, limit=1
    )
    return prices.data[0] if prices.data else None


def create_product(*, product_id: str, name: str) -> stripe.Product:
    return _call("product.create", stripe.Product.create, id=product_id, name=name)


def retrieve_product(*, product_id: str) -> stripe.Product | None:
    try:
        return _call("product.retrieve", stripe.Product.retrieve, product_id)
    except BillingProviderError as error:
        if error.code == "resource_missing":
            return None
        raise


def create_price(
    *, product_id: str, lookup_key: str, unit_amount: int, interval: str, nickname: str
) -> stripe.Price:
    return _call(
        "price.create",
        stripe.Price.create,
        product=product_id,
        unit_amount=unit_amount,
        currency="usd",
        recurring={"interval": interval},
        lookup_key=lookup_key,
        transfer_lookup_key=True,
        nickname=nickname,
    )


# Checkout and portal


def create_checkout_session(
    *,
    customer_id: str,
    price_id: str,
    org_id: str,
    success_url: str,
    cancel_url: str,
    idempotency_key: str,
) -> stripe.checkout.Session:
    return _call(
        "checkout.create",
        stripe.checkout.Session.create,
        mode="subscription",
        customer=customer_id,
        line_items=[{"price": price_id, "quantity": 1}],
        client_reference_id=org_id,
        metadata={"org_id": org_id},
        subscription_data={"metadata": {"org_id": org_id}},
        success_url=success_url,
        cancel_url=cancel_url,
        idempotency_key=idempotency_key,
    )


def create_portal_session(*, customer_id: str, return_url: str):
    return _call(
        "portal.create",
        stripe.billing_portal.Session.create,
        customer=customer_id,
        return_url=return_url,
    )


# Subscriptions and invoices


def retrieve_subscription(subscription_id: str) -> stripe.Subscription:
    return _call("subscription.retrieve", stripe.Subscription.retrieve, subscription_id)


def list_subscriptions(*, customer_id: str) -> list[stripe.Subscription]:
    result = _call(
        "subscription.list",
        stripe.Subscription.list,
        customer=customer_id,
        status="all",
        limit=20,
    )
    return list(result.data)


def update_subscription(subscription_id: str, *, idempotency_key: str, **changes):
    return _call(
        "subscription.update",
        stripe.Subscription.modify,
        subscription_id,
        idempotency_key=idempotency_key,
        **changes,
    )


def cancel_subscription_now(subscription_id: str, *, idempotency_key: str):
    return _call(
        "subscription.cancel",
        stripe.Subscription.cancel,
        subscription_id,
        idempotency_key=idempotency_key,
    )


def preview_invoice(
    *,
    customer_id: str,
    subscription_id: str,
    item_id: str,
    price_id: str,
    proration_date: int,
) -> stripe.Invoice:
    return _call(
        "invoice.preview",
        stripe.Invoice.create_preview,
        customer=customer_id,
        subscription=subscription_id,
        subscription_details={
            "items": [{"id": item_id, "price": price_id}],
            "proration_date": proration_date,
            "proration_behavior": "create_prorations",
        },
    )


def retrieve_invoice(invoice_id: str) -> stripe.Invoice:
    return _call("invoice.retrieve", stripe.Invoice.retrieve, invoice_id)


def list_invoices(*, customer_id: str, limit: int, starting_after: str | None = None):
    params = {"customer": customer_id, "limit": limit}
    if starting_after:
        params["starting_after"] = starting_after
    return _call("invoice.list", stripe.Invoice.list, **params)


def construct_event(*, payload: bytes, signature: str) -> stripe.Event:
    """Verify a webhook's signature on its raw body and parse it.

    Raises ``stripe.SignatureVerificationError`` or ``ValueError``.
    """
    return stripe.Webhook.construct_event(
        payload, signature, settings.STRIPE_WEBHOOK_SECRET, tolerance=WEBHOOK_TOLERANCE
    )


# Seconds a signed webhook stays acceptable: older ones are refused as replays.
WEBHOOK_TOLERANCE = 300

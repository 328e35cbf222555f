"""
Reading Stripe objects of every API version we may be sent.

Newer versions moved fields: the billing period went from the subscription onto
its items, an invoice's subscription went under ``parent.subscription_details``,
and the ``paid`` boolean left the invoice. Every read of those fields goes
through here, so both shapes are understood in one place.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def _get(obj: Any, key: str, default=None):
    if obj is None:
        return default
    try:
        value = obj.get(key, default)
    except AttributeError:
        value = getattr(obj, key, default)
    return default if value is None else value


def object_id(value: Any) -> str | None:
    """Return the id of an expanded object or the id string itself."""
    if value is None or isinstance(value, str):
        return value
    return _get(value, "id")


def timestamp(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value else None


def subscription_items(subscription) -> list:
    return list(_get(_get(subscription, "items", {}), "data", []))


def subscription_period(subscription) -> tuple[datetime | None, datetime | None]:
    """Return the current billing period, from the subscription or its items."""
    start = _get(subscription, "current_period_start")
    end = _get(subscription, "current_period_end")
    if not (start and end):
        items = subscription_items(subscription)
        starts = [_get(i, "current_period_start") for i in items]
        ends = [_get(i, "current_period_end") for i in items]
        starts, ends = [s for s in starts if s], [e for e in ends if e]
        if starts and ends:
            start, end = min(starts), max(ends)
    return timestamp(start), timestamp(end)


def subscription_prices(subscription) -> list:
    """Return the prices on the subscription (several where it has several items)."""
    prices = [_get(item, "price") for item in subscription_items(subscription)]
    prices = [p for p in prices if p]
    if not prices and _get(subscription, "plan"):
        prices = [_get(subscription, "plan")]
    return prices


def invoice_subscription_id(invoice) -> str | None:
    """Return the invoice's subscription id in either shape, or None (one-off)."""
    if sub := object_id(_get(invoice, "subscription")):
        return sub
    details = _get(_get(invoice, "parent"), "subscription_details")
    return object_id(_get(details, "subscription"))


def invoice_is_paid(invoice) -> bool:
    return _get(invoice, "status") == "paid" or _get(invoice, "paid") is True


def invoice_is_final_failure(invoice) -> bool:
    """Whether Stripe will not retry this unpaid invoice by itself.

    ``next_payment_attempt`` is null both after the last automatic retry and for
    ``send_invoice`` invoices, which are never retried automatically; only the
    first means the retries are exhausted.
    """
    automatic = _get(invoice, "collection_method", "charge_automatically")
    return automatic == "charge_automatically" and not _get(
        invoice, "next_payment_attempt"
    )

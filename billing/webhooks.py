"""
Stripe webhook events: stored once, processed in Celery, replayable by staff.

The view verifies the signature on the raw body, stores the event under its id
(a duplicate delivery finds the row and stops), answers 200 at once and queues
the work. Processing re-fetches the object the event names from Stripe, so the
event's own copy, which may be stale or of another API version, decides nothing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from billing import dunning, services, stripe_api, stripe_data
from billing.models import OrgSubscription, StripeEvent

logger = logging.getLogger("agentpost.billing")

SUBSCRIPTION_EVENTS = {
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
}
PAID_EVENTS = {"invoice.paid", "invoice.payment_succeeded"}
HANDLED = (
    SUBSCRIPTION_EVENTS
    | PAID_EVENTS
    | {
        "checkout.session.completed",
        "invoice.payment_failed",
    }
)


class Ignored(Exception):
    """Nothing to do for this event; the message says why."""


def store_event(*, event: dict, now: datetime) -> tuple[StripeEvent, bool]:
    """Store a verified event once; return it and whether it was new."""
    try:
        with transaction.atomic():
            row = StripeEvent.objects.create(
                id=event["id"],
                type=event.get("type", ""),
                api_version=event.get("api_version") or "",
                livemode=bool(event.get("livemode")),
                created=datetime.fromtimestamp(int(event.get("created") or 0), tz=UTC),
                payload=event,
                received_at=now,
            )
        return row, True
    except IntegrityError:
        return StripeEvent.objects.get(pk=event["id"]), False


def process_event(*, event_id: str, now: datetime | None = None) -> str:
    """Apply one stored event; return its final status. Safe to run twice at once."""
    now = now or timezone.now()
    claimed = StripeEvent.objects.filter(
        pk=event_id,
        status__in=[StripeEvent.Status.PENDING, StripeEvent.Status.FAILED],
    ).update(status=StripeEvent.Status.PROCESSING)
    if not claimed:
        return StripeEvent.objects.get(pk=event_id).status
    row = StripeEvent.objects.get(pk=event_id)
    row.attempts += 1
    try:
        org = _handle(row, now)
        row.status, row.detail = StripeEvent.Status.PROCESSED, ""
        row.org = org
    except Ignored as reason:
        row.status, row.detail = StripeEvent.Status.IGNORED, str(reason)
        logger.info(
            "stripe event ignored event=%s type=%s why=%s", row.id, row.type, reason
        )
    except Exception as error:  # recorded for staff, who can replay it
        row.status = StripeEvent.Status.FAILED
        row.detail = f"{type(error).__name__}: {error}"[:2000]
        logger.exception("stripe event failed event=%s type=%s", row.id, row.type)
    row.processed_at = now
    row.save(update_fields=["status", "detail", "attempts", "processed_at", "org"])
    return row.status


def replay_event(*, event_id: str) -> str:
    """Process a failed or ignored event again (the admin's replay action)."""
    StripeEvent.objects.filter(pk=event_id).exclude(
        status=StripeEvent.Status.PROCESSING
    ).update(status=StripeEvent.Status.PENDING)
    return process_event(event_id=event_id)


def _handle(row: StripeEvent, now: datetime):
    if row.type not in HANDLED:
        raise Ignored(f"event type {row.type} is not handled")
    obj = row.payload.get("data", {}).get("object", {})

    if row.type in SUBSCRIPTION_EVENTS:
        return _sync_subscription(obj.get("id"), now)

    if row.type == "checkout.session.completed":
        if obj.get("mode") != "subscription" or not obj.get("subscription"):
            raise Ignored("checkout session without a subscription")
        org_id = (obj.get("metadata") or {}).get("org_id") or obj.get(
            "client_reference_id"
        )
        org = services.org_for_customer(obj.get("customer"), metadata_org_id=org_id)
        if org is None:
            raise Ignored("checkout for an unknown customer")
        if not OrgSubscription.objects.filter(org=org).exists() and obj.get("customer"):
            OrgSubscription.objects.get_or_create(
                org=org, defaults={"stripe_customer_id": obj["customer"]}
            )
        # The first invoice grants the payment; the checkout only links the
        # subscription, so the two never grant twice.
        return _sync_subscription(stripe_data.object_id(obj.get("subscription")), now)

    # Invoices: Stripe's current invoice decides, not the event's copy.
    invoice = _fetch_invoice(obj.get("id"))
    org = services.org_for_customer(stripe_data.object_id(invoice.get("customer")))
    if org is None:
        raise Ignored("invoice for an unknown customer")
    services.sync_invoice_history(invoice)
    subscription_id = stripe_data.invoice_subscription_id(invoice)
    if subscription_id:
        _sync_subscription(subscription_id, now)

    if row.type in PAID_EVENTS:
        if not stripe_data.invoice_is_paid(invoice):
            raise Ignored("invoice is not paid according to Stripe")
        services.grant_payment(invoice=invoice, org=org, now=now)
        dunning.resolve_paid_invoice(org=org, invoice_id=invoice["id"], now=now)
        return org

    # invoice.payment_failed
    if not subscription_id:
        raise Ignored("failed one-off invoice: no subscription to dun")
    dunning.record_payment_failure(org=org, invoice=invoice, now=now)
    return org


def _fetch_invoice(invoice_id: str | None):
    if not invoice_id:
        raise Ignored("event without an invoice id")
    try:
        return stripe_api.retrieve_invoice(invoice_id)
    except stripe_api.BillingProviderError as error:
        if error.code == "resource_missing":
            raise Ignored(f"invoice {invoice_id} does not exist in Stripe") from None
        raise


def _sync_subscription(subscription_id: str | None, now: datetime):
    if not subscription_id:
        raise Ignored("event without a subscription id")
    try:
        subscription = stripe_api.retrieve_subscription(subscription_id)
    except stripe_api.BillingProviderError as error:
        if error.code == "resource_missing":
            raise Ignored(
                f"subscription {subscription_id} does not exist in Stripe"
            ) from None
        raise
    org = services.apply_subscription(subscription=subscription, now=now)
    if org is None:
        raise Ignored("subscription for an unknown customer")
    if subscription.get("status") == "active":
        # Back to active: if the overdue invoice is paid, the org is reinstated.
        dunning.reconcile_open_cases(org=org, now=now)
    return org

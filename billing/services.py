"""
Billing: checkout, the portal, plan changes, cancellation, and keeping each org in
step with Stripe.

Money moves only in Stripe; this module asks Stripe (through ``stripe_api``) and
mirrors what Stripe answers. Webhook events are treated as hints: each handler
re-fetches the object it names and applies Stripe's latest data, so duplicates
and events out of order leave the org as Stripe describes it. Every change to an
org is one transaction with an audit row; emails and webhooks go out on commit.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from djstripe import models as dj

from agentpost.orgs.models import Organization
from agentpost.orgs.services import record_audit
from billing import stripe_api, stripe_data
from billing.models import LIVE_STATUSES, OrgSubscription, PaymentGrant, PlanPrice

logger = logging.getLogger("agentpost.billing")

FREE_PLAN = "free"


class BillingConflict(Exception):
    """The request does not fit the org's billing state (answered with 409)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def idempotency_key(org: Organization, action: str, client_key: str | None) -> str:
    """Return the Stripe idempotency key for one action of one org.

    A client's own ``Idempotency-Key`` makes retries of its request safe end to
    end; without one, each request is new.
    """
    return f"{org.id}:{action}:{client_key or uuid.uuid4()}"


# Customers


def ensure_customer(*, org: Organization) -> OrgSubscription:
    """Return the org's billing row, creating its Stripe customer the first time."""
    with transaction.atomic():
        # One customer per org, even when two checkouts start at once.
        Organization.objects.select_for_update().get(pk=org.pk)
        existing = OrgSubscription.objects.filter(org=org).first()
        if existing:
            return existing
        customer = stripe_api.create_customer(
            org_id=org.id, name=org.name, email=org.email
        )
        _sync_djstripe(dj.Customer, customer)
        return OrgSubscription.objects.create(org=org, stripe_customer_id=customer.id)


def _sync_djstripe(model, data) -> None:
    """Mirror a Stripe object into dj-stripe's tables (the history the console shows).

    A failure here never blocks the org's own state, which is applied from the
    same data by our code.
    """
    try:
        with transaction.atomic():
            model.sync_from_stripe_data(data, api_key=settings.STRIPE_SECRET_KEY)
    except Exception:
        logger.exception("dj-stripe sync failed object=%s", stripe_data.object_id(data))


def sync_invoice_history(invoice) -> None:
    """Keep dj-stripe's copy of an invoice, which the console's history lists."""
    _sync_djstripe(dj.Invoice, invoice)


# Plans


def price_for_plan(plan_code: str) -> PlanPrice:
    price = (
        PlanPrice.objects.filter(plan_id=plan_code).exclude(stripe_price_id="").first()
    )
    if price is None:
        raise BillingConflict(
            "invalid_plan", f"There is no paid plan called {plan_code!r}."
        )
    return price


def plan_for_price(price) -> str | None:
    """Return the plan code a Stripe price stands for, or None if it is not ours."""
    price_id = stripe_data.object_id(price)
    lookup_key = price.get("lookup_key") if hasattr(price, "get") else None
    match = PlanPrice.objects.filter(stripe_price_id=price_id).first()
    if match is None and lookup_key:
        match = PlanPrice.objects.filter(lookup_key=lookup_key).first()
    return match.plan_id if match else None


# The billing API's actions


def start_checkout(
    *,
    org: Organization,
    plan_code: str,
    success_url: str,
    cancel_url: str,
    client_key: str | None,
) -> str:
    """Return the URL of a Stripe Checkout page that subscribes the org to a plan."""
    price = price_for_plan(plan_code)
    account = ensure_customer(org=org)
    if account.is_live:
        raise BillingConflict(
            "subscription_exists",
            "This org already has a subscription; use POST "
            "/billing/subscription/change-plan to change its plan.",
        )
    session = stripe_api.create_checkout_session(
        customer_id=account.stripe_customer_id,
        price_id=price.stripe_price_id,
        org_id=org.id,
        success_url=success_url,
        cancel_url=cancel_url,
        idempotency_key=idempotency_key(org, f"checkout-{plan_code}", client_key),
    )
    logger.info(
        "checkout started org=%s plan=%s session=%s", org.id, plan_code, session.id
    )
    return session.url


def portal_url(*, org: Organization, return_url: str) -> str:
    account = OrgSubscription.objects.filter(org=org).first()
    if account is None:
        raise BillingConflict(
            "no_billing_account",
            "This org has not subscribed yet; start with checkout.",
        )
    return stripe_api.create_portal_session(
        customer_id=account.stripe_customer_id, return_url=return_url
    ).url


def _live_subscription(org: Organization) -> tuple[OrgSubscription, object]:
    account = OrgSubscription.objects.filter(org=org).first()
    if account is None or not account.is_live:
        raise BillingConflict("no_subscription", "This org has no live subscription.")
    return account, stripe_api.retrieve_subscription(account.stripe_subscription_id)


@dataclass
class PlanChange:
    plan_code: str
    amount_due_now_cents: int
    currency: str
    proration_date: int
    applied: bool


def change_plan(
    *,
    org: Organization,
    plan_code: str,
    preview: bool,
    now: datetime,
    actor,
    client_key: str | None,
    proration_date: int | None = None,
) -> PlanChange:
    """Move the org's subscription to another plan, prorated; or preview the cost.

    Upgrades are invoiced at once (the customer pays the difference now);
    downgrades credit the unused part to the next invoice. The preview uses the
    same proration date as the change would, so the figures agree.
    """
    price = price_for_plan(plan_code)
    account, subscription = _live_subscription(org)
    if account.plan_code == plan_code:
        raise BillingConflict("same_plan", f"The org is already on {plan_code}.")
    item = stripe_data.subscription_items(subscription)[0]
    proration_date = proration_date or int(now.timestamp())

    invoice = stripe_api.preview_invoice(
        customer_id=account.stripe_customer_id,
        subscription_id=subscription.id,
        item_id=item["id"],
        price_id=price.stripe_price_id,
        proration_date=proration_date,
    )
    amount = max(int(invoice.get("amount_due") or 0), 0)
    if preview:
        return PlanChange(
            plan_code, amount, invoice.get("currency", "usd"), proration_date, False
        )

    current = PlanPrice.objects.filter(plan_id=account.plan_code).first()
    upgrade = current is None or price.unit_amount_cents > current.unit_amount_cents
    updated = stripe_api.update_subscription(
        subscription.id,
        items=[{"id": item["id"], "price": price.stripe_price_id}],
        proration_behavior="always_invoice" if upgrade else "create_prorations",
        proration_date=proration_date,
        idempotency_key=idempotency_key(org, f"change-{plan_code}", client_key),
    )
    apply_subscription(subscription=updated, now=now, actor=actor)
    logger.info("plan changed org=%s to=%s upgrade=%s", org.id, plan_code, upgrade)
    return PlanChange(
        plan_code, amount, invoice.get("currency", "usd"), proration_date, True
    )


def cancel_subscription(
    *,
    org: Organization,
    at_period_end: bool,
    now: datetime,
    actor,
    client_key: str | None,
) -> OrgSubscription:
    """Cancel now, or at the end of the period.

    ``resume_subscription`` undoes a cancellation at the end of the period.
    """
    account, subscription = _live_subscription(org)
    key = idempotency_key(org, f"cancel-{at_period_end}", client_key)
    if at_period_end:
        updated = stripe_api.update_subscription(
            subscription.id, cancel_at_period_end=True, idempotency_key=key
        )
    else:
        updated = stripe_api.cancel_subscription_now(
            subscription.id, idempotency_key=key
        )
    apply_subscription(subscription=updated, now=now, actor=actor)
    return OrgSubscription.objects.get(org=org)


def resume_subscription(
    *, org: Organization, now: datetime, actor, client_key: str | None
) -> OrgSubscription:
    """Undo a cancellation at period end, before the period ends."""
    account, subscription = _live_subscription(org)
    if not account.cancel_at_period_end:
        raise BillingConflict("not_canceling", "The subscription is not set to cancel.")
    updated = stripe_api.update_subscription(
        subscription.id,
        cancel_at_period_end=False,
        idempotency_key=idempotency_key(org, "resume", client_key),
    )
    apply_subscription(subscription=updated, now=now, actor=actor)
    return OrgSubscription.objects.get(org=org)


def upcoming_amount_cents(*, org: Organization) -> int | None:
    """Return what the next invoice will charge, where Stripe can tell."""
    account = OrgSubscription.objects.filter(org=org).first()
    if account is None or not account.is_live or account.cancel_at_period_end:
        return None
    price = PlanPrice.objects.filter(plan_id=account.plan_code).first()
    return price.unit_amount_cents if price else None


# Keeping orgs in step with Stripe


def org_for_customer(customer_id: str | None, *, metadata_org_id: str | None = None):
    """Return the org of a Stripe customer, or None for a customer we do not know."""
    if customer_id:
        account = OrgSubscription.objects.filter(stripe_customer_id=customer_id).first()
        if account:
            return account.org
    if metadata_org_id:
        return Organization.objects.filter(pk=metadata_org_id).first()
    return None


def apply_subscription(
    *, subscription, now: datetime, actor=None
) -> Organization | None:
    """Make the org's plan, period and billing row match this subscription.

    ``subscription`` must be Stripe's current data (fetched, not taken from an
    event), so the result does not depend on the order events arrived in.
    """
    customer_id = stripe_data.object_id(subscription.get("customer"))
    metadata = subscription.get("metadata") or {}
    org = org_for_customer(customer_id, metadata_org_id=metadata.get("org_id"))
    if org is None:
        logger.warning(
            "subscription for unknown customer sub=%s customer=%s",
            subscription.get("id"),
            customer_id,
        )
        return None
    _sync_djstripe(dj.Subscription, subscription)

    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=org.pk)
        account, _ = OrgSubscription.objects.get_or_create(
            org=org, defaults={"stripe_customer_id": customer_id}
        )
        status = subscription.get("status")
        if (
            account.stripe_subscription_id
            and account.stripe_subscription_id != subscription.get("id")
            and account.is_live
            and status not in LIVE_STATUSES
        ):
            # An old subscription ending says nothing about the live one.
            logger.info(
                "ignoring ended subscription org=%s sub=%s",
                org.id,
                subscription.get("id"),
            )
            return org

        old = {"plan": org.plan, "status": account.status}
        prices = stripe_data.subscription_prices(subscription)
        plan_code = next((c for c in map(plan_for_price, prices) if c), None)
        start, end = stripe_data.subscription_period(subscription)

        account.stripe_subscription_id = subscription.get("id") or ""
        account.status = status or ""
        account.cancel_at_period_end = bool(subscription.get("cancel_at_period_end"))
        account.stripe_price_id = stripe_data.object_id(prices[0]) if prices else ""
        if status in LIVE_STATUSES and plan_code:
            account.plan_code = plan_code
            account.current_period_start, account.current_period_end = start, end
            org.plan = plan_code
            org.current_period_start, org.current_period_end = start, end
        elif status not in LIVE_STATUSES:
            # Cancelled or expired: back to the free plan and its limits, never
            # suspension (dunning suspends only live, unpaid subscriptions).
            account.plan_code = ""
            account.current_period_start = account.current_period_end = None
            org.plan = FREE_PLAN
            org.current_period_start = org.current_period_end = None
            if org.billing_state != Organization.BillingState.ACTIVE:
                org.billing_state = Organization.BillingState.ACTIVE
                org.grace_deadline = None
                org.suspended_at = None
        account.save()
        org.save(
            update_fields=[
                "plan",
                "current_period_start",
                "current_period_end",
                "billing_state",
                "grace_deadline",
                "suspended_at",
            ]
        )
        new = {"plan": org.plan, "status": account.status}
        if new != old:
            record_audit(
                org=org,
                action="billing.subscription_synced",
                old=old,
                new=new,
                now=now,
                actor=actor,
            )
            logger.info(
                "subscription synced org=%s sub=%s status=%s plan=%s",
                org.id,
                account.stripe_subscription_id,
                account.status,
                org.plan,
            )
    return org


def grant_payment(*, invoice, org: Organization, now: datetime) -> bool:
    """Record a paid invoice once; return whether this call granted it."""
    try:
        with transaction.atomic():
            PaymentGrant.objects.create(
                invoice_id=invoice["id"],
                org=org,
                amount_paid_cents=int(invoice.get("amount_paid") or 0),
                granted_at=now,
            )
    except IntegrityError:
        return False
    record_audit(
        org=org,
        action="billing.payment_received",
        new={"invoice": invoice["id"], "amount_paid": invoice.get("amount_paid")},
        now=now,
    )
    logger.info("payment granted org=%s invoice=%s", org.id, invoice["id"])
    return True


def sync_plans() -> list[tuple[str, str]]:
    """Create or update the Stripe product and price of every paid plan.

    Idempotent: a price is found by its lookup key; a new one is made (taking
    the lookup key over) only when the amount or interval changed.
    """
    results = []
    for plan in PlanPrice.objects.select_related("plan"):
        product_id = f"agentpost-{plan.plan_id}"
        if stripe_api.retrieve_product(product_id=product_id) is None:
            stripe_api.create_product(
                product_id=product_id, name=f"AgentPost {plan.name}"
            )
        price = stripe_api.find_price(lookup_key=plan.lookup_key)
        if (
            price is None
            or price.unit_amount != plan.unit_amount_cents
            or price.recurring["interval"] != plan.interval
        ):
            price = stripe_api.create_price(
                product_id=product_id,
                lookup_key=plan.lookup_key,
                unit_amount=plan.unit_amount_cents,
                interval=plan.interval,
                nickname=plan.name,
            )
            outcome = f"price {price.id} created"
        else:
            outcome = f"price {price.id} up to date"
        PlanPrice.objects.filter(pk=plan.pk).update(
            stripe_product_id=product_id, stripe_price_id=price.id
        )
        results.append((plan.plan_id, outcome))
    logger.info("plans synced count=%d", len(results))
    return results

"""
Dunning: what happens between a failed payment and either payment or suspension.

- The first failure of an invoice makes the org ``past_due`` with a grace deadline
  (first failure + the grace period); later failures never move it.
- A reminder goes out ``BILLING_REMINDER_DAYS_BEFORE`` days before the deadline.
- After the deadline, still unpaid, the org is ``suspended``: access is refused,
  data is kept, inbound mail is still stored and webhooks wait.
- Payment of the overdue invoice reinstates the org wherever it is in the flow.
- A subscription that ends (cancelled, or deleted by Stripe after its retries)
  moves the org to the free plan, never to suspension (``services.apply_subscription``).

Each step claims its rows with a conditional UPDATE, so the hourly task may run
twice at once. Staff undo a suspension with the admin's "reinstate" action.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from agentpost.events.services import (
    BILLING_PAYMENT_FAILED,
    ORG_REINSTATED,
    ORG_SUSPENDED,
    emit_event,
)
from agentpost.orgs.models import Organization
from agentpost.orgs.services import record_audit
from billing import emails, stripe_api, stripe_data
from billing.models import DunningCase, OrgSubscription, PlanPrice
from usage.alerts import release_held_mail

logger = logging.getLogger("agentpost.billing")


def grace_period(org: Organization) -> timedelta:
    """Return the org's grace period: staff override, else plan's, else the setting."""
    account = OrgSubscription.objects.filter(org=org).first()
    if account and account.grace_period_days is not None:
        return timedelta(days=account.grace_period_days)
    price = PlanPrice.objects.filter(plan_id=org.plan).first()
    if price and price.grace_period_days is not None:
        return timedelta(days=price.grace_period_days)
    return timedelta(days=settings.BILLING_GRACE_PERIOD_DAYS)


def record_payment_failure(
    *, org: Organization, invoice, now: datetime
) -> DunningCase | None:
    """Open (or update) the dunning case for an unpaid invoice Stripe says failed.

    ``invoice`` is Stripe's current data. Returns None when there is nothing to
    dun: the invoice is paid (a late event), or the org has no live subscription
    (Stripe retrying an invoice of a cancelled one).
    """
    if stripe_data.invoice_is_paid(invoice) or invoice.get("status") in (
        "void",
        "draft",
    ):
        logger.info(
            "late payment_failed ignored org=%s invoice=%s", org.id, invoice["id"]
        )
        return None
    account = OrgSubscription.objects.filter(org=org).first()
    if account is None or not account.is_live:
        logger.info("payment_failed for org without subscription org=%s", org.id)
        return None

    final = stripe_data.invoice_is_final_failure(invoice)
    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=org.pk)
        case, created = DunningCase.objects.select_for_update().get_or_create(
            invoice_id=invoice["id"],
            defaults={
                "org": org,
                "first_failed_at": now,
                "grace_deadline": now + grace_period(org),
                "amount_due_cents": int(invoice.get("amount_due") or 0),
                "hosted_invoice_url": invoice.get("hosted_invoice_url") or "",
                "final": final,
            },
        )
        if not created:
            case.attempts = max(case.attempts, int(invoice.get("attempt_count") or 1))
            case.final = case.final or final
            case.save(update_fields=["attempts", "final"])
            return case
        if case.resolved_at:
            return case

        if org.billing_state == Organization.BillingState.ACTIVE:
            org.billing_state = Organization.BillingState.PAST_DUE
            org.grace_deadline = case.grace_deadline
            org.save(update_fields=["billing_state", "grace_deadline"])
        record_audit(
            org=org,
            action="billing.payment_failed",
            new={
                "invoice": case.invoice_id,
                "grace_deadline": case.grace_deadline.isoformat(),
            },
            now=now,
        )
        emit_event(
            org=org,
            type=BILLING_PAYMENT_FAILED,
            data={
                "invoice_id": case.invoice_id,
                "amount_due": case.amount_due_cents,
                "currency": invoice.get("currency") or "usd",
                "grace_deadline": org.grace_deadline.isoformat()
                if org.grace_deadline
                else None,
                "hosted_invoice_url": case.hosted_invoice_url,
            },
            now=now,
        )
        transaction.on_commit(
            lambda: emails.send_payment_failed(org_id=org.pk, case_id=case.pk)
        )
    logger.warning(
        "payment failed org=%s invoice=%s grace_deadline=%s",
        org.id,
        case.invoice_id,
        case.grace_deadline.isoformat(),
    )
    return case


def resolve_paid_invoice(*, org: Organization, invoice_id: str, now: datetime) -> bool:
    """Close the dunning case of a paid invoice; reinstate the org if nothing is owed.

    Returns whether the org was reinstated (or its past-due state ended).
    """
    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=org.pk)
        DunningCase.objects.filter(
            invoice_id=invoice_id, resolved_at__isnull=True
        ).update(resolved_at=now)
        still_open = DunningCase.objects.filter(
            org=org, resolved_at__isnull=True
        ).exists()
        if still_open or org.billing_state not in (
            Organization.BillingState.PAST_DUE,
            Organization.BillingState.SUSPENDED,
        ):
            return False
        return _reinstate(
            org=org, now=now, actor=None, reason=f"invoice {invoice_id} paid"
        )


def reconcile_open_cases(*, org: Organization, now: datetime) -> bool:
    """Ask Stripe about each open case's invoice and resolve those now paid."""
    reinstated = False
    for case in DunningCase.objects.filter(org=org, resolved_at__isnull=True):
        invoice = stripe_api.retrieve_invoice(case.invoice_id)
        if stripe_data.invoice_is_paid(invoice) or invoice.get("status") == "void":
            reinstated |= resolve_paid_invoice(
                org=org, invoice_id=case.invoice_id, now=now
            )
    return reinstated


def _reinstate(*, org: Organization, now: datetime, actor, reason: str) -> bool:
    was = org.billing_state
    org.billing_state = Organization.BillingState.ACTIVE
    org.grace_deadline = None
    org.suspended_at = None
    org.save(update_fields=["billing_state", "grace_deadline", "suspended_at"])
    record_audit(
        org=org,
        action="billing.reinstated",
        old={"billing_state": was},
        new={"billing_state": org.billing_state},
        now=now,
        actor=actor,
        reason=reason,
    )
    emit_event(
        org=org,
        type=ORG_REINSTATED,
        data={"reinstated_at": now.isoformat(), "previous_state": was},
        now=now,
    )
    transaction.on_commit(lambda: emails.send_reinstated(org_id=org.pk))
    transaction.on_commit(lambda: release_held_mail(org=org, now=now))
    logger.info("org reinstated org=%s from=%s reason=%s", org.id, was, reason)
    return True


def suspend_overdue(*, now: datetime) -> int:
    """Suspend every org whose grace period ended unpaid; return how many.

    Each org is claimed with a conditional UPDATE, so concurrent runs suspend (and
    email) each org once.
    """
    suspended = 0
    due = Organization.objects.filter(
        billing_state=Organization.BillingState.PAST_DUE, grace_deadline__lte=now
    ).values_list("pk", flat=True)
    for org_id in list(due):
        with transaction.atomic():
            claimed = Organization.objects.filter(
                pk=org_id,
                billing_state=Organization.BillingState.PAST_DUE,
                grace_deadline__lte=now,
            ).update(
                billing_state=Organization.BillingState.SUSPENDED, suspended_at=now
            )
            if not claimed:
                continue
            org = Organization.objects.get(pk=org_id)
            DunningCase.objects.filter(org=org, resolved_at__isnull=True).update(
                suspended_at=now
            )
            record_audit(
                org=org,
                action="billing.suspended",
                old={"billing_state": "past_due"},
                new={"billing_state": "suspended"},
                now=now,
                reason="grace period ended unpaid",
            )
            emit_event(
                org=org,
                type=ORG_SUSPENDED,
                data={
                    "suspended_at": now.isoformat(),
                    "grace_deadline": org.grace_deadline.isoformat(),
                    "by_staff": False,
                },
                now=now,
            )
            transaction.on_commit(
                lambda org_id=org_id: emails.send_suspended(org_id=org_id)
            )
        suspended += 1
        logger.warning("org suspended org=%s", org_id)
    return suspended


def send_reminders(*, now: datetime) -> int:
    """Remind owners a few days before suspension; once per case."""
    before = timedelta(days=settings.BILLING_REMINDER_DAYS_BEFORE)
    sent = 0
    cases = DunningCase.objects.filter(
        resolved_at__isnull=True,
        reminder_sent_at__isnull=True,
        suspended_at__isnull=True,
        grace_deadline__lte=now + before,
        grace_deadline__gt=now,
        org__billing_state=Organization.BillingState.PAST_DUE,
    ).values_list("pk", flat=True)
    for case_id in list(cases):
        claimed = DunningCase.objects.filter(
            pk=case_id, reminder_sent_at__isnull=True
        ).update(reminder_sent_at=now)
        if claimed:
            case = DunningCase.objects.get(pk=case_id)
            emails.send_suspension_reminder(org_id=case.org_id, case_id=case.pk)
            sent += 1
    return sent


def run_dunning(*, now: datetime) -> dict[str, int]:
    """The hourly pass: reminders, then suspensions."""
    started = timezone.now()
    result = {
        "reminded": send_reminders(now=now),
        "suspended": suspend_overdue(now=now),
    }
    logger.info(
        "dunning run reminded=%d suspended=%d seconds=%.2f",
        result["reminded"],
        result["suspended"],
        (timezone.now() - started).total_seconds(),
    )
    return result


# Staff actions (admin), each audited with who and why


def staff_extend_grace(
    *, org: Organization, days: int, actor, reason: str, now: datetime
):
    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=org.pk)
        if (
            org.billing_state != Organization.BillingState.PAST_DUE
            or not org.grace_deadline
        ):
            raise ValueError("Only a past-due org has a grace period to extend.")
        old = org.grace_deadline
        org.grace_deadline = old + timedelta(days=days)
        org.save(update_fields=["grace_deadline"])
        DunningCase.objects.filter(org=org, resolved_at__isnull=True).update(
            grace_deadline=org.grace_deadline, reminder_sent_at=None
        )
        record_audit(
            org=org,
            action="billing.grace_extended",
            old={"grace_deadline": old.isoformat()},
            new={"grace_deadline": org.grace_deadline.isoformat()},
            now=now,
            actor=actor,
            reason=reason,
        )
    return org


def staff_suspend(*, org: Organization, actor, reason: str, now: datetime):
    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=org.pk)
        if org.is_suspended:
            return org
        was = org.billing_state
        org.billing_state = Organization.BillingState.SUSPENDED
        org.suspended_at = now
        org.save(update_fields=["billing_state", "suspended_at"])
        record_audit(
            org=org,
            action="billing.suspended",
            old={"billing_state": was},
            new={"billing_state": "suspended"},
            now=now,
            actor=actor,
            reason=reason,
        )
        emit_event(
            org=org,
            type=ORG_SUSPENDED,
            data={
                "suspended_at": now.isoformat(),
                "grace_deadline": None,
                "by_staff": True,
            },
            now=now,
        )
        transaction.on_commit(lambda: emails.send_suspended(org_id=org.pk))
    return org


def staff_reinstate(*, org: Organization, actor, reason: str, now: datetime):
    with transaction.atomic():
        org = Organization.objects.select_for_update().get(pk=org.pk)
        if org.billing_state == Organization.BillingState.ACTIVE:
            return org
        DunningCase.objects.filter(org=org, resolved_at__isnull=True).update(
            resolved_at=now
        )
        _reinstate(org=org, now=now, actor=actor, reason=reason)
    return org

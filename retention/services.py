"""
Retention policies and the warnings that must come before any deletion.

Nothing here deletes data. The rule it sets up: a warning ("notice") names a
cutoff; once it has been emailed to the owners, ``delete_after`` is set to the
sending time plus RETENTION_NOTICE_DAYS, and only from then may cleanup delete
messages created before that cutoff (and older than the policy). A notice
covers only messages that existed when it was written (its cutoff is never in
the future), so a message that arrives later waits for a later notice.

Changing a policy supersedes every outstanding notice and clears the claim, so
a shorter policy deletes nothing until a fresh warning has had its full notice
period.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Q, Sum
from django.template.loader import render_to_string

from agentpost.events.services import emit_event
from agentpost.mail.models import Attachment, Message
from agentpost.orgs.models import Organization
from agentpost.orgs.notify import email_owners
from agentpost.orgs.services import record_audit
from retention.models import ExportLease, RetentionNotice, RetentionPolicy

logger = logging.getLogger("agentpost.retention").getChild(__name__.rpartition(".")[2])

RETENTION_WARNING = "retention.warning"
# A worker that claimed a notice's sending and vanished is retried after this.
SEND_CLAIM_TIMEOUT = timedelta(hours=1)


def notice_period() -> timedelta:
    return timedelta(days=settings.RETENTION_NOTICE_DAYS)


def warning_window() -> timedelta:
    return timedelta(days=settings.RETENTION_WARNING_WINDOW_DAYS)


def get_policy(*, org: Organization) -> RetentionPolicy | None:
    return RetentionPolicy.objects.filter(org=org).first()


def set_policy(
    *, org: Organization, retention_days: int | None, now: datetime, actor=None
) -> RetentionPolicy:
    """Set the org's retention period (None keeps forever) and audit the change.

    A change supersedes the outstanding warnings: nothing more is deleted until
    a warning under the new policy has been sent and its notice period passed.
    """
    with transaction.atomic():
        policy, _ = RetentionPolicy.objects.select_for_update().get_or_create(
            org=org, defaults={"retention_days": None, "updated_at": now}
        )
        old = policy.retention_days
        if old == retention_days:
            return policy

        policy.retention_days = retention_days
        policy.warned_through = None
        policy.warned_at = None
        policy.updated_at = now
        policy.save()
        RetentionNotice.objects.filter(org=org, superseded_at__isnull=True).update(
            superseded_at=now
        )
        record_audit(
            org=org,
            action="retention_policy.changed",
            old={"retention_days": old},
            new={"retention_days": retention_days},
            now=now,
            actor=actor,
        )
        if retention_days is not None:
            # Tell the owners now rather than at the next daily run.
            from retention.tasks import send_retention_warnings

            transaction.on_commit(lambda: send_retention_warnings.delay(org.id))
    logger.info("policy changed org=%s from=%s to=%s", org.id, old, retention_days)
    return policy


def active_notices(org_id: str):
    return RetentionNotice.objects.filter(org_id=org_id, superseded_at__isnull=True)


def deletion_cutoff(*, org_id: str, days: int | None, now: datetime):
    """Return the cutoff cleanup may delete before now, or None if nothing may go.

    Messages created before it are older than the policy and covered by a
    warning whose notice period has passed.
    """
    if days is None:
        return None
    warned = (
        active_notices(org_id)
        .filter(delete_after__lte=now)
        .aggregate(cutoff=Max("cutoff"))["cutoff"]
    )
    if warned is None:
        return None
    return min(warned, now - timedelta(days=days))


def measure(*, org_id: str, before: datetime, since: datetime | None = None):
    """Return (messages, attachment bytes) of the org's messages created before."""
    messages = Message.objects.filter(org_id=org_id, created_at__lt=before)
    attachments = Attachment.objects.filter(
        org_id=org_id, message__created_at__lt=before
    )
    if since is not None:
        messages = messages.filter(created_at__gte=since)
        attachments = attachments.filter(message__created_at__gte=since)
    total = attachments.aggregate(total=Sum("size_bytes"))["total"] or 0
    return messages.count(), total


@dataclass
class Preview:
    begins_at: datetime
    cutoff: datetime
    messages: int
    bytes: int


def deletion_preview(*, org: Organization, now: datetime) -> Preview | None:
    """Say when the next deletion may begin and how much it would remove.

    The answer is the first of: what a matured warning allows now, what a sent
    warning allows when it matures, or what a warning sent now would allow at
    the end of its notice period.
    """
    policy = get_policy(org=org)
    days = policy.retention_days if policy else None
    if days is None:
        return None
    age = timedelta(days=days)

    cutoff = deletion_cutoff(org_id=org.id, days=days, now=now)
    if cutoff is not None:
        messages, size = measure(org_id=org.id, before=cutoff)
        if messages:
            return Preview(begins_at=now, cutoff=cutoff, messages=messages, bytes=size)

    pending = (
        active_notices(org.id)
        .filter(delete_after__gt=now)
        .order_by("delete_after")
        .first()
    )
    if pending is not None:
        begins_at = pending.delete_after
        cutoff = min(pending.cutoff, begins_at - age)
    else:
        begins_at = now + notice_period()
        cutoff = min(now, begins_at - age)
    messages, size = measure(org_id=org.id, before=cutoff)
    return Preview(begins_at=begins_at, cutoff=cutoff, messages=messages, bytes=size)


def warn_org(
    *, org: Organization, now: datetime, dry_run: bool = False
) -> RetentionNotice | None:
    """Write and send the org's next warning if one is due; return it.

    One is due when, within the notice period, deletion would pass what the
    last warning covered, and at most once per warning window (a policy change
    resets that). The claim is a conditional update on the policy row.
    """
    policy = get_policy(org=org)
    if policy is None or policy.retention_days is None:
        return None
    days = policy.retention_days
    age = timedelta(days=days)
    needed = min(now, now + notice_period() - age)
    if policy.warned_through is not None and needed <= policy.warned_through:
        return None
    if policy.warned_at is not None and now - policy.warned_at < warning_window():
        return None

    cutoff = min(now, now + notice_period() + warning_window() - age)
    messages, size = measure(org_id=org.id, before=cutoff, since=policy.warned_through)
    if not messages:
        return None
    if dry_run:
        return RetentionNotice(
            org=org,
            retention_days=days,
            cutoff=cutoff,
            messages=messages,
            bytes=size,
            created_at=now,
        )

    with transaction.atomic():
        claimed = RetentionPolicy.objects.filter(
            Q(warned_through=policy.warned_through)
            if policy.warned_through
            else Q(warned_through__isnull=True),
            Q(warned_at=policy.warned_at)
            if policy.warned_at
            else Q(warned_at__isnull=True),
            pk=org.pk,
            retention_days=days,
        ).update(warned_through=cutoff, warned_at=now)
        if not claimed:
            return None  # another worker, or a policy change, came first
        notice = RetentionNotice.objects.create(
            org=org,
            retention_days=days,
            cutoff=cutoff,
            messages=messages,
            bytes=size,
            created_at=now,
        )
    deliver_notice(notice=notice, now=now)
    return notice


def deliver_notice(*, notice: RetentionNotice, now: datetime) -> bool:
    """Email the warning and emit ``retention.warning``; return True if sent.

    The notice period starts when the email has gone out. If sending fails, the
    notice stays unsent, authorises nothing, and the next run tries again.
    """
    claimed = RetentionNotice.objects.filter(
        Q(send_started_at__isnull=True)
        | Q(send_started_at__lt=now - SEND_CLAIM_TIMEOUT),
        pk=notice.pk,
        sent_at__isnull=True,
        superseded_at__isnull=True,
    ).update(send_started_at=now)
    if not claimed:
        return False

    org = notice.org
    delete_after = now + notice_period()
    context = {
        "org": org,
        "notice": notice,
        "delete_after": delete_after,
        "notice_days": settings.RETENTION_NOTICE_DAYS,
        "policy_url": f"{settings.SITE_URL}/organizations/{org.id}/retention-policy",
        "export_url": f"{settings.SITE_URL}/organizations/{org.id}/export",
    }
    try:
        # A deletion warning must reach someone: without owners, the billing
        # address is warned.
        recipients = email_owners(
            org=org,
            subject=render_to_string(
                "retention/email/warning_subject.txt", context
            ).strip(),
            template="retention/email/warning",
            context=context,
            or_billing_email=True,
        )
    except Exception:  # the mail backend's errors are many and unrelated
        logger.exception("warning not sent org=%s notice=%s", org.id, notice.pk)
        recipients = []
    if not recipients:
        RetentionNotice.objects.filter(pk=notice.pk).update(send_started_at=None)
        return False

    with transaction.atomic():
        RetentionNotice.objects.filter(pk=notice.pk).update(
            sent_at=now, delete_after=delete_after, recipients=recipients
        )
        emit_event(
            org=org,
            type=RETENTION_WARNING,
            data={
                "retention_days": notice.retention_days,
                "cutoff": notice.cutoff.isoformat(),
                "delete_after": delete_after.isoformat(),
                "messages": notice.messages,
                "bytes": notice.bytes,
            },
            now=now,
        )
    logger.info(
        "warning sent org=%s notice=%s messages=%d bytes=%d delete_after=%s",
        org.id,
        notice.pk,
        notice.messages,
        notice.bytes,
        delete_after.isoformat(),
    )
    return True


def send_warnings(
    *, now: datetime, org_id: str | None = None, dry_run: bool = False
) -> list[RetentionNotice]:
    """Retry unsent warnings, then warn every org whose next deletion needs one."""
    sent = []
    unsent = RetentionNotice.objects.filter(
        sent_at__isnull=True, superseded_at__isnull=True
    ).select_related("org")
    policies = RetentionPolicy.objects.filter(
        retention_days__isnull=False
    ).select_related("org")
    if org_id:
        unsent = unsent.filter(org_id=org_id)
        policies = policies.filter(org_id=org_id)

    if not dry_run:
        for notice in unsent:
            if deliver_notice(notice=notice, now=now):
                sent.append(notice)
    for policy in policies.order_by("org_id"):
        notice = warn_org(org=policy.org, now=now, dry_run=dry_run)
        if notice is not None:
            sent.append(notice)
    return sent


def export_in_progress(*, org_id: str, now: datetime) -> bool:
    return ExportLease.objects.filter(
        org_id=org_id, finished_at__isnull=True, expires_at__gt=now
    ).exists()


def preview_policy(*, org: Organization, retention_days: int | None, now: datetime):
    """Say what setting ``retention_days`` would do, before it is saved.

    A new policy always waits for a fresh warning, so the first deletion under
    it may begin one notice period from now at the earliest.
    """
    if retention_days is None:
        return None
    begins_at = now + notice_period()
    cutoff = min(now, begins_at - timedelta(days=retention_days))
    messages, size = measure(org_id=org.id, before=cutoff)
    return Preview(begins_at=begins_at, cutoff=cutoff, messages=messages, bytes=size)

"""
Usage alerts and held inbound mail.

``usage.warning`` fires when a counter reaches its warning threshold and
``usage.exceeded`` when it reaches its limit, each once per counter, period and
limit. A crossing is noticed inline by the charge that makes it; the check that
Celery beat runs every 15 minutes catches what the inline path missed (two
concurrent soft increments can each see a total just under the threshold).
Whoever inserts the UsageAlert row first fires the alert; the others find the
row and stay quiet, so the check can run as often and as concurrently as it
likes.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q

from agentpost import metering
from agentpost.events.services import MESSAGE_RECEIVED, emit_event
from agentpost.mail.inbound import received_event_data
from agentpost.mail.models import Message
from agentpost.orgs.models import Organization
from agentpost.orgs.notify import email_owners
from usage import counting, live
from usage.limits import Limit, get_limits
from usage.models import Mode, UsageAlert, UsageCounter
from usage.periods import Period, counter_period_start, current_period

logger = logging.getLogger(__name__)

USAGE_WARNING = "usage.warning"
USAGE_EXCEEDED = "usage.exceeded"
EVENT_TYPES = {
    UsageAlert.Kind.WARNING: USAGE_WARNING,
    UsageAlert.Kind.EXCEEDED: USAGE_EXCEEDED,
}
# Orgs whose counters have rows newer than this are checked (annual plans too).
CHECK_LOOKBACK = timedelta(days=400)


def notice_crossing(
    *,
    org_id: str,
    limit: Limit,
    period: Period,
    before: int,
    after: int,
    now: datetime,
) -> None:
    """Fire the alerts whose threshold lies between ``before`` and ``after``."""
    if before < limit.warn_at <= after:
        fire_alert(
            org_id=org_id,
            limit=limit,
            period=period,
            kind=UsageAlert.Kind.WARNING,
            current=after,
            now=now,
        )
    if before < limit.limit <= after:
        fire_alert(
            org_id=org_id,
            limit=limit,
            period=period,
            kind=UsageAlert.Kind.EXCEEDED,
            current=after,
            now=now,
        )


def alert_payload(*, org_id: str, limit: Limit, period: Period, current: int) -> dict:
    data = {
        "org_id": org_id,
        "counter": limit.counter,
        "current": current,
        "limit": limit.limit,
        "percentage": limit.percentage(current),
        "mode": limit.mode,
        "period": {"start": period.start.isoformat(), "end": period.end.isoformat()},
    }
    if limit.counter == metering.MESSAGES_RECEIVED:
        # Past a hard limit, inbound mail is stored but held until it is released.
        data["inbound_held"] = limit.mode == Mode.HARD
    return data


def fire_alert(
    *,
    org_id: str,
    limit: Limit,
    period: Period,
    kind: str,
    current: int,
    now: datetime,
) -> bool:
    """Claim the alert and, if this call claimed it, emit its event and email.

    Return whether this call fired it.
    """
    key = {
        "org_id": org_id,
        "counter": limit.counter,
        "period_start": period.start,
        "kind": kind,
        "limit": limit.limit,
    }
    if UsageAlert.objects.filter(**key).exists():
        return False
    try:
        with transaction.atomic():
            alert = UsageAlert.objects.create(**key, current=current, created_at=now)
            emit_event(
                org=org_id,
                type=EVENT_TYPES[kind],
                data=alert_payload(
                    org_id=org_id, limit=limit, period=period, current=current
                ),
                now=now,
            )
            transaction.on_commit(lambda: _queue_alert_email(alert.pk))
    except IntegrityError:
        return False  # another request or check claimed it first
    logger.info(
        "usage alert org=%s counter=%s kind=%s current=%s limit=%s",
        org_id,
        limit.counter,
        kind,
        current,
        limit.limit,
    )
    return True


def _queue_alert_email(alert_id: int) -> None:
    from usage.tasks import send_usage_alert_email

    send_usage_alert_email.delay(alert_id)


def email_alert(*, alert_id: int) -> int:
    """Email the org's owners about one alert; return how many were sent."""
    alert = UsageAlert.objects.select_related("org").get(pk=alert_id)
    org = alert.org
    if alert.kind == UsageAlert.Kind.WARNING:
        subject = f"{org.name}: {alert.counter} is near its limit"
    else:
        subject = f"{org.name}: {alert.counter} has reached its limit"
    sent = email_owners(
        org=org,
        subject=subject,
        template="usage/email/alert",
        context={
            "alert": alert,
            "current": f"{alert.current:,}",
            "limit": f"{alert.limit:,}",
            "percentage": alert.current * 100 // alert.limit if alert.limit else 100,
            "mode": get_limits(org=org)[alert.counter].mode,
        },
    )
    return len(sent)


def check_org_alerts(*, org: Organization, now: datetime) -> int:
    """Fire the alerts the org's current usage calls for; return how many fired."""
    period = current_period(org, now)
    fired = 0
    for counter, limit in get_limits(org=org).items():
        if limit.limit is None:
            continue
        current = counting.total(
            org_id=org.pk,
            counter=counter,
            period_start=counter_period_start(counter, period),
        )
        if current <= 0:
            continue
        for kind, threshold in (
            (UsageAlert.Kind.WARNING, limit.warn_at),
            (UsageAlert.Kind.EXCEEDED, limit.limit),
        ):
            if current >= threshold:
                fired += fire_alert(
                    org_id=org.pk,
                    limit=limit,
                    period=period,
                    kind=kind,
                    current=current,
                    now=now,
                )
    return fired


def release_held_mail(*, org: Organization, now: datetime) -> int:
    """Show the held inbound mail that the org's limit now allows; return the count.

    Mail held in an earlier period is released whole. Mail held in this period
    is released oldest first while the messages shown stay within the limit
    (held mail was counted when it arrived, so it is not counted again). A
    suspended org's mail stays held until it is reinstated.
    """
    if org.is_suspended:
        return 0
    with transaction.atomic():
        # One releaser per org at a time, so two never both use the same room.
        Organization.objects.select_for_update().filter(pk=org.pk).exists()
        held = Message.objects.filter(
            org=org, direction=Message.Direction.INBOUND, status=Message.Status.HELD
        ).order_by("created_at", "id")
        period = current_period(org, now)
        release = list(
            held.filter(created_at__lt=period.start).values_list("pk", flat=True)
        )
        held_now = held.filter(created_at__gte=period.start)
        limit = get_limits(org=org)[metering.MESSAGES_RECEIVED]
        if limit.is_hard:
            counted = counting.total(
                org_id=org.pk,
                counter=metering.MESSAGES_RECEIVED,
                period_start=period.start,
            )
            room = limit.limit - (counted - held_now.count())
            if room > 0:
                release += list(held_now.values_list("pk", flat=True)[:room])
        else:
            release += list(held_now.values_list("pk", flat=True))
        if not release:
            return 0

        Message.objects.filter(pk__in=release, status=Message.Status.HELD).update(
            status=Message.Status.RECEIVED
        )
        for message in Message.objects.filter(pk__in=release).order_by("created_at"):
            emit_event(
                org=org,
                type=MESSAGE_RECEIVED,
                data=received_event_data(message),
                now=now,
            )
    logger.info("held mail released org=%s count=%d", org.pk, len(release))
    return len(release)


def orgs_to_check(*, now: datetime):
    """Return the orgs with recent usage or held mail."""
    with_usage = UsageCounter.objects.filter(
        Q(period_start__gte=now - CHECK_LOOKBACK) | Q(counter=metering.STORAGE_BYTES)
    ).values("org_id")
    with_held = Message.objects.filter(status=Message.Status.HELD).values("org_id")
    return Organization.objects.filter(
        Q(pk__in=with_usage) | Q(pk__in=with_held)
    ).order_by("pk")


def check_usage_alerts(*, now: datetime) -> tuple[int, int]:
    """Fire due alerts and release held mail for every org; return both counts."""
    started = time.monotonic()
    if counts := live.live_counts():
        try:
            counts.flush()  # so that orgs counted only in Redis have rows to find
        except Exception:
            logger.exception("usage flush failed; checking what the database has")
    fired = released = orgs = 0
    for org in orgs_to_check(now=now).iterator():
        orgs += 1
        try:
            fired += check_org_alerts(org=org, now=now)
            released += release_held_mail(org=org, now=now)
        except Exception:
            logger.exception("usage check failed org=%s", org.pk)
    logger.info(
        "usage check orgs=%d alerts=%d released=%d seconds=%.2f",
        orgs,
        fired,
        released,
        time.monotonic() - started,
    )
    return fired, released

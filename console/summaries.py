"""The weekly usage summary: every counter against its limit, the change from the
week before, and what needs attention, emailed to each owner who has not opted out.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string

from agentpost.orgs.models import Membership, Organization
from console.banner import dunning_banner
from console.models import WeeklySummary
from usage.limits import get_limits
from usage.services import get_usage, get_usage_history

logger = logging.getLogger(__name__)

COUNTER_LABELS = {
    "messages_sent": "Messages sent",
    "messages_received": "Messages received",
    "storage_bytes": "Attachment storage",
    "api_calls": "API calls",
    "webhook_deliveries": "Webhook deliveries",
}


def week_start(now: datetime) -> date:
    """Return the Monday (UTC) of the week before ``now``: the week summarised."""
    today = now.date()
    return today - timedelta(days=today.weekday() + 7)


def summary_context(*, org: Organization, now: datetime) -> dict:
    usage = get_usage(org=org, now=now)
    limits = get_limits(org=org)
    history = get_usage_history(org=org, days=14, now=now)
    rows, attention = [], []
    for counter, label in COUNTER_LABELS.items():
        series = history["counters"][counter]
        if counter == "storage_bytes":
            this_week, last_week = series[-1], series[-8]
        else:
            this_week, last_week = sum(series[-7:]), sum(series[:7])
        row = usage[counter]
        limit = limits[counter]
        rows.append(
            {
                "label": label,
                "is_bytes": counter == "storage_bytes",
                "current": row["current"],
                "limit": row["limit"],
                "percentage": row["percentage"],
                "this_week": this_week,
                "last_week": last_week,
                "change": this_week - last_week,
            }
        )
        if (
            row["percentage"] is not None
            and row["percentage"] >= limit.warning_threshold
        ):
            verb = "has reached" if row["percentage"] >= 100 else "is at"
            attention.append(
                f"{label} {verb} {row['percentage']}% of the plan's limit."
            )
    if banner := dunning_banner(org):
        attention.insert(0, f"{banner.title} {banner.body}")
    return {
        "org": org,
        "rows": rows,
        "attention": attention,
        "period": usage["period"],
        "site_url": settings.SITE_URL,
    }


def send_weekly_summaries(*, now: datetime) -> int:
    """Email each opted-in owner of every org their weekly summary; return how many."""
    week = week_start(now)
    sent = 0
    owners = (
        Membership.objects.filter(
            role=Membership.Role.OWNER, weekly_summary=True, user__is_active=True
        )
        .exclude(user__email="")
        .select_related("org", "user")
        .order_by("org_id")
    )
    contexts: dict[str, dict] = {}
    for membership in owners.iterator():
        try:
            with transaction.atomic():
                WeeklySummary.objects.create(
                    org=membership.org,
                    user=membership.user,
                    week_start=week,
                    sent_at=now,
                )
        except IntegrityError:
            continue  # sent already this week
        if membership.org_id not in contexts:
            contexts[membership.org_id] = summary_context(org=membership.org, now=now)
        context = {**contexts[membership.org_id], "week_start": week}
        message = EmailMultiAlternatives(
            subject=f"{membership.org.name}: your AgentPost week",
            body=render_to_string("console/email/weekly_summary.txt", context),
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[membership.user.email],
        )
        message.attach_alternative(
            render_to_string("console/email/weekly_summary.html", context), "text/html"
        )
        message.send()
        sent += 1
    logger.info("weekly summaries sent count=%d week=%s", sent, week)
    return sent

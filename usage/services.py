from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from django.db import transaction
from django.db.models import Sum

from agentpost import metering
from agentpost.orgs.models import Organization
from agentpost.orgs.services import record_audit
from usage import alerts, counting, live
from usage.limits import Limit, get_limits, get_plan_limits, plan_code
from usage.models import LimitOverride, Mode, UsageDaily
from usage.periods import LEVEL_PERIOD_START, counter_period_start, current_period

logger = logging.getLogger(__name__)

HISTORY_DAYS_DEFAULT = 30
HISTORY_DAYS_MAX = 365
OVERRIDE_FIELDS = ("limit", "mode", "warning_threshold")


def get_usage(*, org: Organization, now: datetime) -> dict:
    """Return the org's usage in the brief's shape, with limits and the period."""
    period = current_period(org, now)
    limits = get_limits(org=org)
    usage: dict = {}
    for counter in metering.COUNTERS:
        current = counting.total(
            org_id=org.pk,
            counter=counter,
            period_start=counter_period_start(counter, period),
        )
        limit = limits[counter]
        usage[counter] = {
            "current": current,
            "limit": limit.limit,
            "percentage": limit.percentage(current),
            "mode": limit.mode if limit.limit is not None else None,
        }
    usage["period"] = {"start": period.start.isoformat(), "end": period.end.isoformat()}
    return usage


def get_usage_history(*, org: Organization, days: int, now: datetime) -> dict:
    """Return a daily series per counter for the last ``days`` days (UTC), oldest first.

    Counts are what each day added; storage_bytes is the level at the end of
    each day, worked back from today's level.
    """
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    sums = {
        (row["counter"], row["day"]): row["total"]
        for row in UsageDaily.objects.filter(org=org, day__gte=first)
        .values("counter", "day")
        .annotate(total=Sum("value"))
    }
    days_list = [first + timedelta(days=n) for n in range(days)]
    if counts := live.live_counts():
        # Redis's days are ahead of their rows by up to a flush.
        for (counter, day), ahead in counts.unflushed_days(
            org_id=org.pk, days=days_list[-2:]
        ).items():
            sums[counter, day] = sums.get((counter, day), 0) + ahead
    series: dict = {}
    for counter in metering.COUNTERS:
        if counter == metering.STORAGE_BYTES:
            continue
        series[counter] = [sums.get((counter, day), 0) for day in days_list]

    level = counting.total(
        org_id=org.pk,
        counter=metering.STORAGE_BYTES,
        period_start=LEVEL_PERIOD_START,
    )
    levels: list[int] = []
    for day in reversed(days_list):  # today's end is now; earlier ends subtract
        levels.append(level)
        level -= sums.get((metering.STORAGE_BYTES, day), 0)
    series[metering.STORAGE_BYTES] = list(reversed(levels))

    return {
        "days": [day.isoformat() for day in days_list],
        "counters": series,
    }


def _limit_out(limit: Limit) -> dict:
    return {
        "limit": limit.limit,
        "mode": limit.mode,
        "warning_threshold": limit.warning_threshold,
    }


def get_settings(*, org: Organization) -> dict:
    """Return the org's effective limits, with its plan's values and its overrides."""
    limits = get_limits(org=org)
    plan_limits = get_plan_limits(org=org)
    overrides = {o.counter: o for o in LimitOverride.objects.filter(org=org)}
    empty = dict.fromkeys(OVERRIDE_FIELDS)
    return {
        "plan": plan_code(org.plan),
        "limits": {
            counter: {
                **_limit_out(limits[counter]),
                "plan": _limit_out(plan_limits[counter]),
                "overrides": (
                    overrides[counter].as_dict() if counter in overrides else empty
                ),
            }
            for counter in metering.COUNTERS
        },
    }


class OverrideNotAllowed(Exception):
    """An org may tighten its limits, not loosen its plan's."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def check_own_override(*, org: Organization, changes: dict[str, dict]) -> None:
    """Refuse overrides that would loosen the plan; staff set those in the admin.

    Raise OverrideNotAllowed naming the field. An org may lower a limit, make a
    limit hard, and move its warning threshold; a higher limit, or a soft mode
    where the plan is hard, would let it use more than it pays for.
    """
    plan_limits = get_plan_limits(org=org)
    staff_set = set(
        LimitOverride.objects.filter(
            org=org, counter__in=list(changes), set_by_staff=True
        ).values_list("counter", flat=True)
    )
    if staff_set:
        check_staff_overrides_kept(org=org, changes=changes, counters=staff_set)
    for counter, fields in changes.items():
        if fields is None:
            continue
        plan = plan_limits[counter]
        limit = fields.get("limit")
        if limit is not None and plan.limit is not None and limit > plan.limit:
            raise OverrideNotAllowed(
                f"limits.{counter}.limit",
                f"At most your plan's limit of {plan.limit}; contact support or "
                "change plan for more.",
            )
        if fields.get("mode") == Mode.SOFT and plan.is_hard:
            raise OverrideNotAllowed(
                f"limits.{counter}.mode",
                "Your plan's limit is hard; change plan for soft limits.",
            )


def check_staff_overrides_kept(
    *, org: Organization, changes: dict[str, dict | None], counters: set[str]
) -> None:
    """Refuse changes that would loosen or remove an override staff set."""
    current = get_limits(org=org)
    plan_limits = get_plan_limits(org=org)
    for counter in counters:
        fields = changes[counter]
        field = f"limits.{counter}"
        message = "Set by AgentPost staff; it can be tightened but not loosened here."
        if fields is None:
            raise OverrideNotAllowed(field, message)
        now_limit = current[counter]
        limit = fields["limit"] if "limit" in fields else now_limit.limit
        if limit is None:
            limit = plan_limits[counter].limit
        mode = fields.get("mode", now_limit.mode) or plan_limits[counter].mode
        looser_limit = now_limit.limit is not None and (
            limit is None or limit > now_limit.limit
        )
        if looser_limit:
            raise OverrideNotAllowed(f"{field}.limit", message)
        if now_limit.is_hard and mode == Mode.SOFT:
            raise OverrideNotAllowed(f"{field}.mode", message)


def update_limit_overrides(
    *,
    org: Organization,
    changes: dict[str, dict | None],
    now: datetime,
    actor=None,
    by_staff: bool = False,
) -> dict:
    """Apply per-counter override changes; a null value returns to the plan's.

    ``changes`` maps a counter to ``{field: value or None}`` for the fields to
    change, or to None to drop all of that counter's overrides. Writes one audit
    row with the old and new overrides, re-checks alerts (a new limit re-arms
    them) and releases held mail the new limits allow. Return the new overrides.
    """
    with transaction.atomic():
        Organization.objects.select_for_update().filter(pk=org.pk).exists()
        existing = {
            o.counter: o
            for o in LimitOverride.objects.select_for_update().filter(
                org=org, counter__in=list(changes)
            )
        }
        old = {c: o.as_dict() for c, o in existing.items()}
        new: dict = {}
        for counter, fields in changes.items():
            override = existing.get(counter) or LimitOverride(
                org=org, counter=counter, mode="", updated_at=now
            )
            values = override.as_dict()
            if fields is None:
                values = dict.fromkeys(OVERRIDE_FIELDS)
            else:
                values.update(fields)
            if all(v is None for v in values.values()):
                if override.pk:
                    override.delete()
                new[counter] = None
                continue
            override.limit = values["limit"]
            override.mode = values["mode"] or ""
            override.warning_threshold = values["warning_threshold"]
            override.set_by_staff = override.set_by_staff or by_staff
            override.updated_at = now
            override.save()
            new[counter] = override.as_dict()
        old = {c: old.get(c) for c in changes}
        if old != new:
            record_audit(
                org=org,
                action="usage.limits_changed",
                old=old,
                new=new,
                now=now,
                actor=actor,
            )
    logger.info("usage limits changed org=%s counters=%s", org.pk, ",".join(changes))

    # After the commit, so the check and the release see the new limits.
    alerts.check_org_alerts(org=org, now=now)
    alerts.release_held_mail(org=org, now=now)
    return new

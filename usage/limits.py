"""
Which limit applies to an org's counter: its override, else its plan's, else none.

When billing is off every org is on the ``selfhosted`` plan, whatever its
``plan`` field says. An org whose plan has no row here has no limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import connection
from django.utils.dateparse import parse_datetime

from agentpost import metering
from agentpost.orgs.models import SELFHOSTED_PLAN, Organization
from usage.models import DEFAULT_WARNING_THRESHOLD, LimitOverride, Mode, PlanLimit
from usage.periods import Period, period_between


@dataclass(frozen=True)
class Limit:
    counter: str
    limit: int | None  # None: no limit
    mode: str
    warning_threshold: int  # percent

    @property
    def is_hard(self) -> bool:
        return self.limit is not None and self.mode == Mode.HARD

    @property
    def warn_at(self) -> int | None:
        """The value at which usage.warning fires."""
        if self.limit is None:
            return None
        return math.ceil(self.limit * self.warning_threshold / 100)

    def percentage(self, current: int) -> int | None:
        if self.limit is None:
            return None
        if self.limit == 0:
            return 100 if current <= 0 else 100 + current
        return current * 100 // self.limit


def plan_code(org_plan: str) -> str:
    return org_plan if settings.BILLING_ENABLED else SELFHOSTED_PLAN


def resolve(
    counter: str,
    plan: tuple[int | None, str | None, int | None] | None,
    override: tuple[int | None, str | None, int | None] | None,
) -> Limit:
    """Merge a plan's (limit, mode, threshold) with an override's.

    A null in the override falls through to the plan's value.
    """
    plan_limit, plan_mode, plan_threshold = plan or (None, None, None)
    own_limit, own_mode, own_threshold = override or (None, None, None)
    return Limit(
        counter=counter,
        limit=own_limit if own_limit is not None else plan_limit,
        mode=own_mode or plan_mode or Mode.SOFT,
        warning_threshold=own_threshold or plan_threshold or DEFAULT_WARNING_THRESHOLD,
    )


def get_limits(*, org: Organization) -> dict[str, Limit]:
    """Return the effective limit of every counter for the org."""
    plans = {
        row.counter: (row.limit, row.mode, row.warning_threshold)
        for row in PlanLimit.objects.filter(plan_id=plan_code(org.plan))
    }
    overrides = {
        row.counter: (row.limit, row.mode, row.warning_threshold)
        for row in LimitOverride.objects.filter(org=org)
    }
    return {
        counter: resolve(counter, plans.get(counter), overrides.get(counter))
        for counter in metering.COUNTERS
    }


def get_plan_limits(*, org: Organization) -> dict[str, Limit]:
    """Return the limits the org's plan alone would give."""
    plans = {
        row.counter: (row.limit, row.mode, row.warning_threshold)
        for row in PlanLimit.objects.filter(plan_id=plan_code(org.plan))
    }
    return {c: resolve(c, plans.get(c), None) for c in metering.COUNTERS}


def _quoted(*names: str) -> list[str]:
    return [connection.ops.quote_name(n) for n in names]


def _charge_context_sql() -> str:
    org, plan_limit, override, limit = _quoted(
        Organization._meta.db_table,
        PlanLimit._meta.db_table,
        LimitOverride._meta.db_table,
        "limit",
    )
    return (
        f"SELECT o.current_period_start, o.current_period_end,"
        f" p.{limit}, p.mode, p.warning_threshold,"
        f" v.{limit}, v.mode, v.warning_threshold"
        f" FROM {org} o"
        f" LEFT JOIN {plan_limit} p"
        f" ON p.plan_id = COALESCE(%s, o.plan) AND p.counter = %s"
        f" LEFT JOIN {override} v ON v.org_id = o.id AND v.counter = %s"
        f" WHERE o.id = %s"
    )


def _as_datetime(value) -> datetime | None:
    # Raw SQLite rows give naive UTC datetimes (or text); PostgreSQL aware ones.
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = parse_datetime(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def forced_plan() -> str | None:
    """Return the plan every org is on regardless of its own, if any."""
    return None if settings.BILLING_ENABLED else SELFHOSTED_PLAN


def load_charge_context(
    *, org_id: str, counter: str
) -> tuple[Limit, datetime | None, datetime | None]:
    """Return the counter's limit and the org's billing period bounds in one query.

    This runs on every API request counted in the database, so it reads the
    org, its plan's limit and its override in one round trip instead of loading
    models.
    """
    with connection.cursor() as cursor:
        cursor.execute(_charge_context_sql(), [forced_plan(), counter, counter, org_id])
        row = cursor.fetchone()
    if row is None:
        raise Organization.DoesNotExist(org_id)
    limit = resolve(counter, tuple(row[2:5]), tuple(row[5:8]))
    return limit, _as_datetime(row[0]), _as_datetime(row[1])


def load_for_charge(
    *, org_id: str, counter: str, now: datetime
) -> tuple[Limit, Period]:
    """Return the counter's limit and the org's period at ``now``."""
    limit, start, end = load_charge_context(org_id=org_id, counter=counter)
    return limit, period_between(start, end, now)

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from agentpost import metering
from agentpost.orgs.models import Organization

# storage_bytes is a level kept in one row that never resets.
LEVEL_PERIOD_START = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime


def month_period(now: datetime) -> Period:
    """Return the calendar month in UTC that contains ``now``."""
    now = now.astimezone(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = (
        datetime(now.year + 1, 1, 1, tzinfo=UTC)
        if now.month == 12
        else datetime(now.year, now.month + 1, 1, tzinfo=UTC)
    )
    return Period(start, end)


def period_between(
    start: datetime | None, end: datetime | None, now: datetime
) -> Period:
    """Return the subscription period [start, end) if it holds ``now``, else the month.

    A paid org counts within its subscription's billing period; a free org (or a
    paid one whose period has lapsed without news from Stripe) by calendar month.
    A new period is simply new rows, so nothing has to reset counters.
    """
    if start and end and start <= now < end:
        return Period(start, end)
    return month_period(now)


def current_period(org: Organization, now: datetime) -> Period:
    """Return the org's usage period at ``now``."""
    return period_between(org.current_period_start, org.current_period_end, now)


def counter_period_start(counter: str, period: Period | None) -> datetime | None:
    """Return the period_start a counter's rows are kept under.

    A level's is fixed; without a period, a count's is None (not known yet).
    """
    if counter == metering.STORAGE_BYTES:
        return LEVEL_PERIOD_START
    return period.start if period else None

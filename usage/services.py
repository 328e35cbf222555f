from __future__ import annotations

from datetime import datetime

from agentpost import metering
from agentpost.orgs.models import Organization
from usage.meter import period_start_for
from usage.models import UsageCounter
from usage.periods import current_period


def get_usage(*, org: Organization, now: datetime) -> dict:
    """Return the org's usage in the brief's shape, with the current period."""
    period = current_period(org, now)
    values = {
        counter: UsageCounter.objects.filter(
            org=org, counter=counter, period_start=period_start_for(org, counter, now)
        )
        .values_list("value", flat=True)
        .first()
        or 0
        for counter in metering.COUNTERS
    }
    usage: dict = {
        counter: {"current": value, "limit": None, "percentage": None}
        for counter, value in values.items()
    }
    usage["period"] = {"start": period.start.isoformat(), "end": period.end.isoformat()}
    return usage

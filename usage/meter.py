from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import F

from agentpost import metering
from agentpost.orgs.models import Organization
from usage.models import UsageCounter
from usage.periods import LEVEL_PERIOD_START, current_period


def period_start_for(org: Organization, counter: str, now: datetime) -> datetime:
    if counter == metering.STORAGE_BYTES:
        return LEVEL_PERIOD_START
    return current_period(org, now).start


def add(*, org_id: str, counter: str, period_start: datetime, amount: int) -> int:
    """Add ``amount`` to one counter row atomically and return the new value."""
    rows = UsageCounter.objects.filter(
        org_id=org_id, counter=counter, period_start=period_start
    )
    for _ in range(2):
        if rows.update(value=F("value") + amount):
            return rows.values_list("value", flat=True).get()
        try:
            with transaction.atomic():
                UsageCounter.objects.create(
                    org_id=org_id,
                    counter=counter,
                    period_start=period_start,
                    value=amount,
                )
            return amount
        except IntegrityError:
            continue  # another request created the row first: update it
    raise RuntimeError("usage counter row could not be written")


class DatabaseMeter:
    """Count usage in the database, in the caller's transaction."""

    def charge(
        self, *, org_id: str, counter: str, amount: int, now: datetime, enforce: bool
    ) -> metering.Charge:
        org = Organization.objects.only(
            "id", "current_period_start", "current_period_end"
        ).get(pk=org_id)
        period_start = period_start_for(org, counter, now)
        value = add(
            org_id=org_id, counter=counter, period_start=period_start, amount=amount
        )
        period = current_period(org, now)
        return metering.Charge(
            counter=counter, current=value, limit=None, resets_at=period.end
        )

    def credit(self, *, org_id: str, counter: str, amount: int, now: datetime) -> None:
        org = Organization.objects.only(
            "id", "current_period_start", "current_period_end"
        ).get(pk=org_id)
        add(
            org_id=org_id,
            counter=counter,
            period_start=period_start_for(org, counter, now),
            amount=-amount,
        )

    def release_held(self, *, org_id: str, now: datetime) -> int:
        from agentpost.mail.inbound import release_held_messages

        return release_held_messages(org_id=org_id, now=now)

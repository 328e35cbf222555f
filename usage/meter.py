"""The meter the core charges through (installed by ``usage.apps``)."""

from __future__ import annotations

from datetime import UTC, datetime

from agentpost import metering
from usage import alerts, counting
from usage.limits import load_for_charge
from usage.periods import counter_period_start


class DatabaseMeter:
    """Count usage in the database, enforce hard limits, and notice crossings.

    A charge costs two round trips: one to read the limit and period, one to
    count. It runs in the caller's transaction when there is one, so a refused
    or rolled-back operation leaves no count behind.
    """

    def charge(
        self, *, org_id: str, counter: str, amount: int, now: datetime, enforce: bool
    ) -> metering.Charge:
        limit, period = load_for_charge(org_id=org_id, counter=counter, now=now)
        period_start = counter_period_start(counter, period)
        # storage_bytes is a level: it never resets.
        resets_at = None if counter == metering.STORAGE_BYTES else period.end
        key = {"org_id": org_id, "counter": counter, "period_start": period_start}
        day = now.astimezone(UTC).date()

        if limit.is_hard and enforce:
            current = counting.add_within(
                **key, day=day, amount=amount, limit=limit.limit
            )
            if current is None:
                raise metering.QuotaExceeded(
                    counter=counter,
                    limit=limit.limit,
                    current=counting.total(**key),
                    resets_at=resets_at,
                )
        else:
            # An unenforced charge past a hard limit still goes to shard 0, so
            # that concurrent ones are ordered and exactly the first ones fit.
            shard = 0 if limit.is_hard else counting.pick_shard()
            current = counting.add(**key, day=day, amount=amount, shard=shard)

        if limit.limit is not None and amount > 0:
            alerts.notice_crossing(
                org_id=org_id,
                limit=limit,
                period=period,
                before=current - amount,
                after=current,
                now=now,
            )
        return metering.Charge(
            counter=counter,
            current=current,
            limit=limit.limit,
            resets_at=resets_at,
            over_limit=limit.is_hard and current > limit.limit,
        )

    def credit(self, *, org_id: str, counter: str, amount: int, now: datetime) -> None:
        limit, period = load_for_charge(org_id=org_id, counter=counter, now=now)
        counting.add(
            org_id=org_id,
            counter=counter,
            period_start=counter_period_start(counter, period),
            day=now.astimezone(UTC).date(),
            amount=-amount,
            shard=0 if limit.is_hard else counting.pick_shard(),
        )

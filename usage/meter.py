"""The meter the core charges through (installed by ``usage.apps``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from django.db import transaction

from agentpost import metering
from usage import alerts, counting, live
from usage.limits import Limit, forced_plan, load_for_charge, resolve
from usage.models import LiveOutbox
from usage.periods import Period, counter_period_start, month_period, period_between

logger = logging.getLogger(__name__)


class UsageMeter:
    """Count usage, enforce hard limits, and notice crossings.

    ``api_calls`` is counted in Redis when USAGE_REDIS_URL is set (usage.live);
    everything else, and everything without Redis, in the database. There, on
    PostgreSQL a charge is one round trip; on SQLite it reads the limits, then
    counts. It runs in the caller's transaction when there is one, so a refused
    or rolled-back operation leaves no count behind.
    """

    def charge(
        self, *, org_id: str, counter: str, amount: int, now: datetime, enforce: bool
    ) -> metering.Charge | None:
        try:
            limit, period, current, refused = self._count(
                org_id=org_id, counter=counter, amount=amount, now=now, enforce=enforce
            )
        except live.Unknown:
            # Redis stopped answering after it was asked: the call may or may
            # not be counted there, and a hard limit may have refused it.
            # Counting it again would break exactness, so it is not; an
            # enforced charge is turned away (the client retries), anything
            # else goes through.
            logger.warning("usage: reply lost for %s of %s", counter, org_id)
            if enforce:
                raise metering.UsageUnavailable from None
            return None
        # storage_bytes is a level: it never resets.
        resets_at = None if counter == metering.STORAGE_BYTES else period.end
        if refused:
            raise metering.QuotaExceeded(
                counter=counter, limit=limit.limit, current=current, resets_at=resets_at
            )
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
        # Redis keeps its counts as ever-growing totals (see usage.live).
        assert counter not in live.LIVE_COUNTERS, counter
        self._count(
            org_id=org_id, counter=counter, amount=-amount, now=now, enforce=False
        )

    def _count(self, **charge) -> tuple[Limit, Period, int, bool]:
        """Count and return (limit, period, total, refused).

        ``charge`` is org_id, counter, amount, now and enforce.
        """
        if charge["counter"] in live.LIVE_COUNTERS and (counts := live.live_counts()):
            try:
                counted = counts.charge(**charge)
            except live.Unavailable:
                return self._count_while_redis_is_away(**charge)
            return counted.limit, counted.period, counted.total, counted.refused
        return self._count_in_database(**charge)

    def _count_while_redis_is_away(
        self, *, org_id: str, counter: str, amount: int, now: datetime, enforce: bool
    ) -> tuple[Limit, Period, int, bool]:
        """Count a live counter in the database, with a note for Redis.

        The note (an outbox row, in the same transaction) has Redis add the
        count to its base. Not against a hard limit, though: the database
        cannot see what Redis counted but has not flushed, so it could let one
        too many through; those calls are turned away until Redis is back.
        """
        limit, _ = load_for_charge(org_id=org_id, counter=counter, now=now)
        if enforce and limit.is_hard:
            raise metering.UsageUnavailable
        with transaction.atomic():
            result = self._count_in_database(
                org_id=org_id, counter=counter, amount=amount, now=now, enforce=enforce
            )
            live.record_for_redis(
                kind=LiveOutbox.Kind.BASE,
                org_id=org_id,
                counter=counter,
                period_start=result[1].start,
            )
        return result

    def _count_in_database(
        self, *, org_id: str, counter: str, amount: int, now: datetime, enforce: bool
    ) -> tuple[Limit, Period, int, bool]:
        day = now.astimezone(UTC).date()
        if counting.is_postgres():
            counted = counting.count_in_database(
                org_id=org_id,
                counter=counter,
                plan=forced_plan(),
                now=now,
                month_start=month_period(now).start,
                fixed_start=counter_period_start(counter, None),
                day=day,
                amount=amount,
                enforce=enforce,
            )
            limit = resolve(counter, counted.plan, counted.override)
            period = period_between(
                counted.org_period_start, counted.org_period_end, now
            )
            return limit, period, counted.total, counted.refused

        limit, period = load_for_charge(org_id=org_id, counter=counter, now=now)
        key = {
            "org_id": org_id,
            "counter": counter,
            "period_start": counter_period_start(counter, period),
        }
        if limit.is_hard and enforce:
            current = counting.add_within(
                **key, day=day, amount=amount, limit=limit.limit
            )
            if current is None:
                return limit, period, counting.total(**key), True
            return limit, period, current, False
        # An unenforced charge past a hard limit still goes to shard 0, so that
        # concurrent ones are ordered and exactly the first ones fit.
        shard = 0 if limit.is_hard else counting.pick_shard()
        current = counting.add(**key, day=day, amount=amount, shard=shard)
        return limit, period, current, False

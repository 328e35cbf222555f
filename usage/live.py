"""
Live counts in Redis for the counter every request pays: ``api_calls``.

Why: in the database, every API call of a busy org is one more transaction on
the same few rows, and one such transaction costs about as much CPU as the
request it counts. Redis increments in memory; one Lua script per call reads
the org's cached limit, checks it, counts the call and marks it for the
database, in one round trip.

What lives where:

- ``t:<org>|<counter>|<period start>``: the calls counted through Redis in that
  period (an absolute value, only ever growing).
- ``b:<same>``: the base, what the database holds from elsewhere (counts made
  while Redis was unreachable), refreshed at each flush. The total is t + b.
- ``d:<org>|<counter>|<day>``: the calls counted through Redis that day.
- ``cfg:<org>|<counter>``: the org's resolved limit and billing period, tagged
  with the invalidation numbers it was built under (``inv:<org>`` and ``gen``);
  a change to the org, its overrides or any plan's limits bumps one of them on
  commit, so the next call reloads from the database. Limits take effect at once.
- ``dirty``: keys counted since their last flush, each with a change number.

Exactness: Redis runs one script at a time, so a hard limit lets exactly as
many calls through as it allows, however many processes call at once.

Durability: a call is counted in Redis before the request goes on, so a crash of
the web process loses nothing. ``flush`` (Celery beat, every
USAGE_FLUSH_SECONDS) copies the absolute values into one row of their own
(shard ``REDIS_SHARD``) with GREATEST, so a flush may run twice, concurrently,
or be cut short, and is simply done again; an entry leaves ``dirty`` only if
nothing was counted under it since it was read. Losing Redis itself loses what
was counted since the last flush: run it with ``appendonly yes`` to avoid that.
When Redis is lost and comes back empty, a counter's first call seeds it from
the database.

When Redis is unreachable, calls are counted in the database as without Redis
(usage.counting), and the next flush adds them to the base; a hard limit then
holds to within what Redis had not yet flushed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum

from agentpost import metering
from agentpost.orgs.models import Organization
from usage.counting import SHARDS
from usage.limits import Limit, load_charge_context
from usage.models import Mode, UsageCounter, UsageDaily
from usage.periods import Period, month_period, period_between

logger = logging.getLogger(__name__)

# The counters kept in Redis. The others move with a database write of their
# own (a message stored, a delivery logged) and are counted in its transaction,
# so a rolled-back write leaves no count; api_calls has no such write.
LIVE_COUNTERS = frozenset({metering.API_CALLS})
# The database row that holds what was counted through Redis.
REDIS_SHARD = SHARDS
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A safety net: invalidation on commit is what keeps the cached limits right.
CONFIG_TTL_MS = 300_000
DAY_TTL_MS = 3 * 86_400_000
PERIOD_TTL_AFTER_END = timedelta(days=35)
FLUSH_BATCH = 500
# After Redis fails, the database counts alone for this long before Redis is
# tried again, so an outage does not add a connect timeout to every request.
RETRY_AFTER_SECONDS = 5.0

# One round trip per call. ARGV: prefix, org, counter, amount, enforce (0/1),
# now and the month's start (µs since the epoch, as text), day (ISO).
# Returns {status, period start, total, limit, hard, threshold, org period
# start, org period end}; status is ok, refused, load (no valid cached limit)
# or seed (no count for the period yet: then the period's start and, if it is
# the org's billing period, its end).
CHARGE_SCRIPT = """
local p, org, counter = ARGV[1], ARGV[2], ARGV[3]
local amount = tonumber(ARGV[4])
local ckey = p .. 'cfg:' .. org .. '|' .. counter
local cfg = redis.call('HMGET', ckey, 'limit', 'hard', 'threshold',
    'start', 'end', 'inv', 'gen')
if not cfg[6] then return {'load'} end
local inv = redis.call('GET', p .. 'inv:' .. org) or '0'
local gen = redis.call('GET', p .. 'gen') or '0'
if cfg[6] ~= inv or cfg[7] ~= gen then return {'load'} end

local now = tonumber(ARGV[6])
local ps = ARGV[7]
if cfg[4] ~= '' and tonumber(cfg[4]) <= now and now < tonumber(cfg[5]) then
    ps = cfg[4]
end
local key = org .. '|' .. counter .. '|' .. ps
local counted = redis.call('GET', p .. 't:' .. key)
if not counted then
    local pe = ''
    if ps == cfg[4] then pe = cfg[5] end
    return {'seed', ps, pe}
end
local total = tonumber(counted) + tonumber(redis.call('GET', p .. 'b:' .. key) or '0')

local reply = {'ok', ps, total + amount, cfg[1], cfg[2], cfg[3], cfg[4], cfg[5]}
if cfg[2] == '1' and ARGV[5] == '1' and total + amount > tonumber(cfg[1]) then
    reply[1] = 'refused'
    reply[3] = total
    return reply
end
redis.call('INCRBY', p .. 't:' .. key, amount)
local dkey = p .. 'd:' .. org .. '|' .. counter .. '|' .. ARGV[8]
if redis.call('INCRBY', dkey, amount) == amount then
    redis.call('PEXPIRE', dkey, ARGV[9])
end
redis.call('HINCRBY', p .. 'dirty', key .. '|' .. ARGV[8], 1)
return reply
"""

# Start a period's count from the database, unless another caller just did.
# ARGV: prefix, key, day key, counted, base, day's count, period TTL (ms), day TTL.
SEED_SCRIPT = """
local p = ARGV[1]
if redis.call('SET', p .. 't:' .. ARGV[2], ARGV[4], 'NX', 'PX', ARGV[7]) then
    redis.call('SET', p .. 'b:' .. ARGV[2], ARGV[5], 'PX', ARGV[7])
    redis.call('SET', p .. 'd:' .. ARGV[3], ARGV[6], 'NX', 'PX', ARGV[8])
end
return 1
"""

# Drop dirty entries that nothing was counted under since the flush read them.
# ARGV: prefix, then pairs of (entry, change number read).
CLEAN_SCRIPT = """
local dirty = ARGV[1] .. 'dirty'
local removed = 0
for i = 2, #ARGV, 2 do
    if redis.call('HGET', dirty, ARGV[i]) == ARGV[i + 1] then
        removed = removed + redis.call('HDEL', dirty, ARGV[i])
    end
end
return removed
"""


def micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_micros(value: str | bytes) -> datetime:
    return EPOCH + timedelta(microseconds=int(value))


@dataclass(frozen=True)
class LiveCharge:
    limit: Limit
    period: Period
    total: int
    refused: bool


class Unavailable(Exception):
    """Redis did not answer; count in the database instead."""


class LiveCounts:
    """The Redis side of counting (see the module's docstring)."""

    def __init__(self, url: str, prefix: str) -> None:
        self.prefix = prefix
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=settings.USAGE_REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=settings.USAGE_REDIS_TIMEOUT_SECONDS,
            health_check_interval=30,
        )
        self._charge = self.client.register_script(CHARGE_SCRIPT)
        self._seed = self.client.register_script(SEED_SCRIPT)
        self._clean = self.client.register_script(CLEAN_SCRIPT)
        self._down_until = 0.0

    # Counting ------------------------------------------------------------------

    def charge(
        self, *, org_id: str, counter: str, amount: int, now: datetime, enforce: bool
    ) -> LiveCharge:
        """Count in Redis; raise Unavailable if Redis cannot be reached."""
        if time.monotonic() < self._down_until:
            raise Unavailable
        day = now.astimezone(UTC).date().isoformat()
        args = [
            self.prefix,
            org_id,
            counter,
            amount,
            int(enforce),
            micros(now),
            micros(month_period(now).start),
            day,
            DAY_TTL_MS,
        ]
        try:
            for _ in range(5):
                reply = self._charge(args=args)
                status = reply[0]
                if status == b"load":
                    self.load_config(org_id=org_id, counter=counter, now=now)
                elif status == b"seed":
                    start = from_micros(reply[1])
                    end = from_micros(reply[2]) if reply[2] else None
                    self.seed(
                        org_id=org_id,
                        counter=counter,
                        period=Period(start, end or month_period(start).end),
                        day=day,
                        now=now,
                    )
                else:
                    return self._result(counter, reply, now)
        except redis.RedisError as exc:
            self._down_until = time.monotonic() + RETRY_AFTER_SECONDS
            logger.warning("usage redis unavailable, counting in the database: %s", exc)
            raise Unavailable from exc
        raise RuntimeError(f"usage: could not count {counter} for {org_id} in Redis")

    def _result(self, counter: str, reply: list, now: datetime) -> LiveCharge:
        _, _, total, limit, hard, threshold, start, end = reply
        limit = Limit(
            counter=counter,
            limit=int(limit) if limit else None,
            mode=Mode.HARD if hard == b"1" else Mode.SOFT,
            warning_threshold=int(threshold),
        )
        period = period_between(
            from_micros(start) if start else None,
            from_micros(end) if end else None,
            now,
        )
        return LiveCharge(
            limit=limit, period=period, total=int(total), refused=reply[0] == b"refused"
        )

    def load_config(self, *, org_id: str, counter: str, now: datetime) -> None:
        """Cache the org's limit and period, tagged with the numbers read first."""
        inv, gen = self.client.mget(f"{self.prefix}inv:{org_id}", f"{self.prefix}gen")
        limit, start, end = load_charge_context(org_id=org_id, counter=counter)
        key = f"{self.prefix}cfg:{org_id}|{counter}"
        with self.client.pipeline() as pipe:
            pipe.hset(
                key,
                mapping={
                    "limit": "" if limit.limit is None else limit.limit,
                    "hard": int(limit.is_hard),
                    "threshold": limit.warning_threshold,
                    "start": micros(start) if start and end else "",
                    "end": micros(end) if start and end else "",
                    "inv": inv or b"0",
                    "gen": gen or b"0",
                },
            )
            pipe.pexpire(key, CONFIG_TTL_MS)
            pipe.execute()

    def seed(
        self,
        *,
        org_id: str,
        counter: str,
        period: Period,
        day: str,
        now: datetime,
    ) -> None:
        """Start the period's count in Redis from what the database holds."""
        counted, base = _database_parts(org_id, counter, period.start)
        today = (
            UsageDaily.objects.filter(
                org_id=org_id, counter=counter, day=day, shard=REDIS_SHARD
            )
            .values_list("value", flat=True)
            .first()
        )
        # Kept a while past the period's end, for late flushes and reads.
        ttl = max(period.end, now) + PERIOD_TTL_AFTER_END - now
        self._seed(
            args=[
                self.prefix,
                f"{org_id}|{counter}|{micros(period.start)}",
                f"{org_id}|{counter}|{day}",
                counted,
                base,
                today or 0,
                max(int(ttl.total_seconds() * 1000), 1),
                DAY_TTL_MS,
            ]
        )

    # Reading -------------------------------------------------------------------

    def total(self, *, org_id: str, counter: str, period_start: datetime) -> int | None:
        """Return the live total, or None if Redis has no count for the period."""
        if time.monotonic() < self._down_until:
            return None
        try:
            counted = self.client.get(
                f"{self.prefix}t:{org_id}|{counter}|{micros(period_start)}"
            )
        except redis.RedisError:
            return None
        if counted is None:
            return None
        return int(counted) + _database_parts(org_id, counter, period_start)[1]

    # Invalidation --------------------------------------------------------------

    def forget_org(self, org_id: str) -> None:
        self.client.incr(f"{self.prefix}inv:{org_id}")

    def forget_all(self) -> None:
        self.client.incr(f"{self.prefix}gen")

    # Flushing ------------------------------------------------------------------

    def flush(self) -> int:
        """Copy every dirty count into the database; return how many were written."""
        written = 0
        cursor = 0
        while True:
            cursor, entries = self.client.hscan(
                f"{self.prefix}dirty", cursor, count=FLUSH_BATCH
            )
            if entries:
                written += self._flush_batch(entries)
            if cursor == 0:
                return written

    def _flush_batch(self, entries: dict[bytes, bytes]) -> int:
        parsed = []
        for entry, changes in entries.items():
            org_id, counter, start, day = entry.decode().split("|")
            parsed.append((entry, changes, org_id, counter, start, day))
        with self.client.pipeline(transaction=False) as pipe:
            for _, _, org_id, counter, start, day in parsed:
                pipe.get(f"{self.prefix}t:{org_id}|{counter}|{start}")
                pipe.get(f"{self.prefix}d:{org_id}|{counter}|{day}")
            values = pipe.execute()
        existing = set(
            Organization.objects.filter(
                pk__in={item[2] for item in parsed}
            ).values_list("pk", flat=True)
        )
        periods: dict[tuple, int] = {}
        days: dict[tuple, int] = {}
        for (_, _, org_id, counter, start, day), counted, today in zip(
            parsed, values[::2], values[1::2], strict=True
        ):
            if org_id not in existing:
                continue  # the org was deleted; its counts go with it
            if counted is not None:
                key = (org_id, counter, from_micros(start))
                periods[key] = max(periods.get(key, 0), int(counted))
            if today is not None:
                key = (org_id, counter, date.fromisoformat(day))
                days[key] = max(days.get(key, 0), int(today))
        with transaction.atomic():
            _write_greatest(UsageCounter, "period_start", periods)
            _write_greatest(UsageDaily, "day", days)
        self._refresh_bases(periods)
        pairs = []
        for entry, changes, *_ in parsed:
            pairs += [entry, changes]
        self._clean(args=[self.prefix, *pairs])
        return len(periods)

    def _refresh_bases(self, periods: dict[tuple, int]) -> None:
        """Set each period's base to what the database holds beside Redis's row."""
        if not periods:
            return
        bases = dict.fromkeys(periods, 0)
        rows = (
            UsageCounter.objects.filter(
                org_id__in={key[0] for key in periods},
                counter__in={key[1] for key in periods},
                period_start__in={key[2] for key in periods},
            )
            .exclude(shard=REDIS_SHARD)
            .values_list("org_id", "counter", "period_start")
            .annotate(base=Sum("value"))
        )
        for org_id, counter, start, base in rows:
            if (org_id, counter, start) in bases:
                bases[org_id, counter, start] = base
        with self.client.pipeline(transaction=False) as pipe:
            for (org_id, counter, start), base in bases.items():
                key = f"{self.prefix}b:{org_id}|{counter}|{micros(start)}"
                pipe.set(key, base, keepttl=True, xx=True)
            pipe.execute()


def _database_parts(
    org_id: str, counter: str, period_start: datetime
) -> tuple[int, int]:
    """Return (what Redis flushed, everything else) of a period in the database."""
    counted = base = 0
    rows = UsageCounter.objects.filter(
        org_id=org_id, counter=counter, period_start=period_start
    ).values_list("shard", "value")
    for shard, value in rows:
        if shard == REDIS_SHARD:
            counted = value
        else:
            base += value
    return counted, base


def _write_greatest(model, field: str, values: dict[tuple, int]) -> None:
    """Upsert (org, counter, field) rows of REDIS_SHARD to at least the given values."""
    if not values:
        return
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    greatest = "GREATEST" if connection.vendor == "postgresql" else "MAX"
    adapt = (
        connection.ops.adapt_datetimefield_value
        if field == "period_start"
        else connection.ops.adapt_datefield_value
    )
    rows = [
        (org_id, counter, adapt(moment), REDIS_SHARD, value)
        for (org_id, counter, moment), value in sorted(values.items())
    ]
    with connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {table} AS t (org_id, counter, {quote(field)}, shard, value)"
            " VALUES (%s, %s, %s, %s, %s)"
            f" ON CONFLICT (org_id, counter, {quote(field)}, shard)"
            f" DO UPDATE SET value = {greatest}(t.value, EXCLUDED.value)",
            rows,
        )


_live: LiveCounts | None = None
_live_url: str | None = None


def live_counts() -> LiveCounts | None:
    """Return the Redis side if USAGE_REDIS_URL is set, else None."""
    global _live, _live_url
    url = settings.USAGE_REDIS_URL
    if not url:
        return None
    if _live is None or _live_url != (url + settings.USAGE_REDIS_PREFIX):
        _live = LiveCounts(url, settings.USAGE_REDIS_PREFIX)
        _live_url = url + settings.USAGE_REDIS_PREFIX
    return _live

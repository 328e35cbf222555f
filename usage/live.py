"""
Live counts in Redis for the counter every request pays: ``api_calls``.

Why: in the database, every API call of a busy org is one more transaction on
the same few rows, and one such transaction costs about as much CPU as the
request it counts. Redis increments in memory; one Lua script per call reads
the org's cached limit, checks it, counts the call and marks it for the
database, in one round trip.

What lives where (every key under USAGE_REDIS_PREFIX):

- ``t:<org>|<counter>|<period start>``: the calls counted through Redis in that
  period (an absolute value, only ever growing).
- ``b:<same>``: the base, what the database holds from elsewhere (calls counted
  there while Redis was away). The total is t + b. It only ever grows.
- ``d:<org>|<counter>|<day>``: the calls counted through Redis that day.
- ``cfg:<org>|<counter>|<forced plan>``: the org's resolved limit and billing
  period, tagged with the invalidation numbers it was loaded under (``inv:<org>``
  and ``gen``). A change to the org, its overrides or any plan's limits bumps
  one of them when it commits, so the next call reloads: limits take effect at
  once.
- ``dirty``: what was counted since its last flush, each with a change number.

Exactness: Redis runs one script at a time, so a hard limit lets exactly as
many calls through as it allows, however many processes call at once. The
script is sent once per call, never retried: a call whose reply is lost may or
may not have been counted, so it is not counted again (usage.meter turns it
away if it was to be enforced).

Durability: a call is counted in Redis before the request goes on, so a crash of
the web process loses nothing. ``flush`` (Celery beat, every
USAGE_FLUSH_SECONDS) copies the absolute values into one row of their own
(shard ``REDIS_SHARD``) with GREATEST, so a flush may run twice, concurrently,
or be cut short, and is simply done again; an entry leaves ``dirty`` only if
nothing was counted under it since it was read. Losing Redis itself loses what
was counted since the last flush (run it with ``appendonly yes``). A Redis
server that is new, restarted or restored from older data is reconciled with the
database before anything is counted on it (``reconcile``); a counter missing
from Redis is seeded from the database by its first call.

What must reach Redis even if it is away when it happens (limits changed, calls
counted in the database meanwhile) goes through ``LiveOutbox`` rows, written
with the change and done by the flush if not at once. While Redis is
unreachable, calls are counted in the database as without Redis, except those
against a hard limit, which usage.meter turns away.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import redis
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Sum
from django.utils import timezone
from redis.exceptions import NoScriptError

from agentpost import metering
from agentpost.iterables import batched
from agentpost.orgs.models import Organization
from usage.counting import SHARDS
from usage.limits import Limit, forced_plan, load_charge_context
from usage.models import LiveOutbox, Mode, UsageCounter, UsageDaily
from usage.periods import Period, month_period, period_between

logger = logging.getLogger(__name__)

# The counters kept in Redis. The others move with a database write of their
# own (a message stored, a delivery logged) and are counted in its transaction,
# so a rolled-back write leaves no count; api_calls has no such write.
LIVE_COUNTERS = frozenset({metering.API_CALLS})
# The database row that holds what was counted through Redis.
REDIS_SHARD = SHARDS
# Amounts above this are counted in the database: Lua's numbers are doubles.
MAX_LIVE_AMOUNT = 2**31
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A safety net: invalidation on commit is what keeps the cached limits right.
CONFIG_TTL_MS = 300_000
DAY_TTL_MS = 3 * 86_400_000
PERIOD_TTL_AFTER_END = timedelta(days=35)
LONGEST_PERIOD = timedelta(days=366)
FLUSH_BATCH = 500
OUTBOX_BATCH = 2_000
OUTBOX_BATCHES_ON_RETURN = 5
# After Redis fails, the database counts alone for this long before Redis is
# tried again, so an outage does not add a connect timeout to every request.
RETRY_AFTER_SECONDS = 5.0
# How long a call waits for another process to reconcile a new Redis server,
# and how long that process's lock lasts unless renewed (after each batch).
RECONCILE_WAIT_SECONDS = 2.0
RECONCILE_LOCK_MS = 10_000

# One round trip per call. ARGV: prefix, org, counter, amount, enforce (0/1),
# now and the month's start (µs since the epoch, as text), day (ISO), day TTL,
# forced plan. Returns {status, period start, total, limit, hard, threshold,
# org period start, org period end}; status is ok, refused, load (no valid
# cached limit) or seed (no count for the period yet: then the period's start
# and, if it is the org's billing period, its end).
CHARGE_SCRIPT = """
local p, org, counter = ARGV[1], ARGV[2], ARGV[3]
local cfg = redis.call('HMGET', p .. 'cfg:' .. org .. '|' .. counter .. '|' .. ARGV[10],
    'limit', 'hard', 'threshold', 'start', 'end', 'inv', 'gen')
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
local amount = tonumber(ARGV[4])

local reply = {'ok', ps, total + amount, cfg[1], cfg[2], cfg[3], cfg[4], cfg[5]}
if cfg[2] == '1' and ARGV[5] == '1' and total + amount > tonumber(cfg[1]) then
    reply[1] = 'refused'
    reply[3] = total
    return reply
end
redis.call('INCRBY', p .. 't:' .. key, ARGV[4])
local dkey = p .. 'd:' .. org .. '|' .. counter .. '|' .. ARGV[8]
if redis.call('INCRBY', dkey, ARGV[4]) == amount then
    redis.call('PEXPIRE', dkey, ARGV[9])
end
redis.call('HINCRBY', p .. 'dirty', key .. '|' .. ARGV[8], 1)
return reply
"""

# Cache an org's limits, unless they were invalidated while they loaded.
# ARGV: prefix, org, config key, TTL (ms), inv and gen read before loading, then
# field, value pairs.
CONFIG_SCRIPT = """
local p = ARGV[1]
local inv = redis.call('GET', p .. 'inv:' .. ARGV[2]) or '0'
local gen = redis.call('GET', p .. 'gen') or '0'
if inv ~= ARGV[5] or gen ~= ARGV[6] then return 0 end
redis.call('DEL', ARGV[3])
redis.call('HSET', ARGV[3], 'inv', inv, 'gen', gen, unpack(ARGV, 7))
redis.call('PEXPIRE', ARGV[3], ARGV[4])
return 1
"""

# Start a period's count from what the database holds, unless another caller
# just did. ARGV: prefix, key, day key, counted, base, day's count, period TTL
# (ms), day TTL.
SEED_SCRIPT = """
local p = ARGV[1]
if redis.call('SET', p .. 't:' .. ARGV[2], ARGV[4], 'NX', 'PX', ARGV[7]) then
    local base = redis.call('GET', p .. 'b:' .. ARGV[2])
    if not base or tonumber(base) < tonumber(ARGV[5]) then
        redis.call('SET', p .. 'b:' .. ARGV[2], ARGV[5], 'PX', ARGV[7])
    else
        redis.call('PEXPIRE', p .. 'b:' .. ARGV[2], ARGV[7])
    end
    redis.call('SET', p .. 'd:' .. ARGV[3], ARGV[6], 'NX', 'PX', ARGV[8])
end
return 1
"""

# Raise keys to what the database holds: counts and bases only grow, so an
# older read landing last changes nothing. ARGV: prefix, kind (b, t or d), TTL
# (ms) for a missing key made here (0: leave missing keys to seeding), then
# (key, value) pairs.
RAISE_SCRIPT = """
for i = 4, #ARGV, 2 do
    local key = ARGV[1] .. ARGV[2] .. ':' .. ARGV[i]
    local value = redis.call('GET', key)
    if not value then
        if tonumber(ARGV[3]) > 0 then
            redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[3])
        end
    elseif tonumber(value) < tonumber(ARGV[i + 1]) then
        redis.call('SET', key, ARGV[i + 1], 'KEEPTTL')
    end
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
    """Nothing was counted in Redis; count in the database instead."""


class Unknown(Exception):
    """Redis may or may not have counted the call (its reply was lost)."""


class NotReconciled(redis.ConnectionError):
    """The Redis server restarted (or is new) and its data is not checked yet."""


def _run_id(info) -> bytes:
    """Return the run_id from INFO server's reply (text or parsed)."""
    if isinstance(info, dict):
        return str(info["run_id"]).encode()
    if isinstance(info, str):
        info = info.encode()
    for line in info.splitlines():
        if line.startswith(b"run_id:"):
            return line.split(b":", 1)[1].strip()
    raise redis.ResponseError("INFO server gave no run_id")


class LiveCounts:
    """The Redis side of counting (see the module's docstring)."""

    def __init__(self, url: str, prefix: str) -> None:
        self.prefix = prefix
        timeout = settings.USAGE_REDIS_TIMEOUT_SECONDS
        options = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "health_check_interval": 30,
        }
        # Counting: every new connection first checks that this Redis server's
        # data was reconciled with the database (see reconcile).
        self.client = redis.Redis.from_url(
            url, redis_connect_func=self._check_server, **options
        )
        # Flushing, reconciling, invalidating: no such check.
        self.admin = redis.Redis.from_url(url, **options)
        self._charge = self.client.register_script(CHARGE_SCRIPT)
        self._config = self.client.register_script(CONFIG_SCRIPT)
        self._seed = self.client.register_script(SEED_SCRIPT)
        self._raise = self.admin.register_script(RAISE_SCRIPT)
        self._clean = self.admin.register_script(CLEAN_SCRIPT)
        self._down_until = 0.0

    # A new server --------------------------------------------------------------

    def _check_server(self, conn) -> None:
        """Refuse a connection to a server whose data is not reconciled yet."""
        conn.on_connect()
        conn.send_command("INFO", "server")
        try:
            run_id = _run_id(conn.read_response())
        except redis.ResponseError as exc:  # an ACL without INFO, say
            raise redis.ConnectionError(
                f"usage: Redis refuses INFO to this user ({exc}); it is needed "
                "to notice a restarted server, so counting stays in the database"
            ) from exc
        conn.send_command("GET", f"{self.prefix}server")
        if conn.read_response() != run_id:
            raise NotReconciled(f"usage: Redis server {run_id!r} not reconciled")

    def reconcile(self) -> bool:
        """Bring a restarted or new Redis server level with the database.

        A server that comes back from a snapshot, an AOF that lost its last
        second, or a replica that lagged, may hold counts older than what was
        already flushed; counting on top of them would undercount and let hard
        limits overshoot. So until this has run for the server (named by its
        run_id, new at every start), counting connections are refused and the
        database counts. Raises every count, day and base to what the database
        holds, and drops the cached limits. Return whether it ran here (False
        if it was done already, or by another process while this one waited).
        """
        run_id = _run_id(self.admin.execute_command("INFO", "server"))
        server = f"{self.prefix}server"
        lock, token = f"{self.prefix}reconciling", uuid.uuid4().hex
        deadline = time.monotonic() + RECONCILE_WAIT_SECONDS
        # Another process may be at it: wait while it renews its lock, rather
        # than count apart; take over if its lock lapses.
        while not self.admin.set(lock, token, nx=True, px=RECONCILE_LOCK_MS):
            if self.admin.get(server) == run_id:
                return False
            if time.monotonic() > deadline:
                raise redis.TimeoutError("usage: Redis is still being reconciled")
            time.sleep(0.02)
        try:
            if self.admin.get(server) == run_id:
                return False
            # No flush may be between reading Redis and committing meanwhile: it
            # may have read the old server, and its write must be seen here.
            with _flush_lock(exclusive=True):
                for keys in batched(
                    self.admin.scan_iter(match=f"{self.prefix}t:*", count=1000),
                    FLUSH_BATCH,
                ):
                    self._raise_to_database([k.decode() for k in keys])
                    self.admin.set(lock, token, xx=True, px=RECONCILE_LOCK_MS)
            # A number never used before, so that no limits loaded from the old
            # server's numbers are taken for current.
            self.admin.set(f"{self.prefix}gen", secrets.randbits(62))
            self.admin.set(server, run_id)
        finally:
            if self.admin.get(lock) == token.encode():
                self.admin.delete(lock)
        logger.warning("usage redis server %s reconciled with the database", run_id)
        return True

    def _raise_to_database(self, keys: list[str]) -> None:
        """Raise these period counts, their bases and recent days to the database's."""
        start = len(self.prefix) + 2
        periods = {}
        for key in keys:
            org_id, counter, period_start = key[start:].split("|")
            periods[org_id, counter, period_start] = from_micros(period_start)
        orgs = {org_id for org_id, _, _ in periods}
        counters = {counter for _, counter, _ in periods}
        flushed = {
            (org_id, counter, moment): value
            for org_id, counter, moment, value in UsageCounter.objects.filter(
                org_id__in=orgs,
                counter__in=counters,
                period_start__in=set(periods.values()),
                shard=REDIS_SHARD,
            ).values_list("org_id", "counter", "period_start", "value")
        }
        args = [self.prefix, "t", 0]
        for (org_id, counter, period_start), moment in periods.items():
            args += [
                f"{org_id}|{counter}|{period_start}",
                flushed.get((org_id, counter, moment), 0),
            ]
        self._raise(args=args)
        self._raise_bases({(o, c, m) for (o, c, _), m in periods.items()})
        # The days Redis still keeps, made where the restored data lacks them.
        first = timezone.now().date() - timedelta(milliseconds=DAY_TTL_MS)
        args = [self.prefix, "d", DAY_TTL_MS]
        for org_id, counter, day, value in UsageDaily.objects.filter(
            org_id__in=orgs, counter__in=counters, day__gt=first, shard=REDIS_SHARD
        ).values_list("org_id", "counter", "day", "value"):
            args += [f"{org_id}|{counter}|{day.isoformat()}", value]
        self._raise(args=args)

    def _back_up(self) -> None:
        """Tell Redis what was counted in the database while it was away."""
        self._down_until = 0.0
        try:
            # Bounded, so that after a long outage one request does not pay for
            # all of it; the flush does the rest.
            self.do_outbox(max_batches=OUTBOX_BATCHES_ON_RETURN)
        except (redis.RedisError, DatabaseError) as exc:
            self._down_until = time.monotonic() + RETRY_AFTER_SECONDS
            raise Unavailable from exc

    def known_down(self) -> bool:
        """Whether Redis failed lately (then the database counts for a while)."""
        return time.monotonic() < self._down_until

    # Counting ------------------------------------------------------------------

    def charge(
        self, *, org_id: str, counter: str, amount: int, now: datetime, enforce: bool
    ) -> LiveCharge:
        """Count in Redis.

        Raise Unavailable if nothing was counted (count in the database then), or
        Unknown if Redis stopped answering after it was asked.
        """
        if self.known_down() or not 0 < amount < MAX_LIVE_AMOUNT:
            raise Unavailable
        if self._down_until:
            self._back_up()
        day = now.astimezone(UTC).date().isoformat()
        plan = forced_plan() or ""
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
            plan,
        ]
        try:
            for _ in range(5):
                try:
                    reply = self._run_charge(args)
                except NotReconciled:
                    self.reconcile()
                    continue
                status = reply[0]
                if status == b"load":
                    self.load_config(org_id=org_id, counter=counter, plan=plan)
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
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._down_until = time.monotonic() + RETRY_AFTER_SECONDS
            logger.warning("usage redis unavailable, counting in the database: %s", exc)
            raise Unavailable from exc
        except redis.RedisError as exc:
            logger.exception("usage redis refused a command; counting in the database")
            raise Unavailable from exc
        # Limits kept changing while they loaded: let the database count this one.
        logger.warning(
            "usage: limits of %s changed while loading; counted in db", org_id
        )
        raise Unavailable

    def _run_charge(self, args: list) -> list:
        try:
            return self._send_once(args)
        except NoScriptError:  # first use, or Redis restarted and forgot it
            self.client.script_load(CHARGE_SCRIPT)
            return self._send_once(args)

    def _send_once(self, args: list) -> list:
        """Send the charge script once and read its reply (redis-py would retry).

        A failure before the script is sent means nothing was counted
        (ConnectionError, TimeoutError); a failure after raises Unknown.
        """
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            try:
                conn.send_command("EVALSHA", self._charge.sha, 0, *args)
            except (redis.ConnectionError, redis.TimeoutError):
                conn.disconnect()
                raise
            try:
                return conn.read_response()
            except redis.BusyLoadingError:
                raise  # Redis is starting and ran nothing
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # Not an outage yet: if Redis is gone, the next call's connect
                # says so. Counting in the database meanwhile would not see
                # what Redis counted.
                conn.disconnect()
                raise Unknown from exc
        finally:
            pool.release(conn)

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

    def load_config(self, *, org_id: str, counter: str, plan: str) -> None:
        """Cache the org's limit and period, unless they change while loading."""
        inv, gen = self.client.mget(f"{self.prefix}inv:{org_id}", f"{self.prefix}gen")
        limit, start, end = load_charge_context(org_id=org_id, counter=counter)
        period = [micros(start), micros(end)] if start and end else ["", ""]
        self._config(
            args=[
                self.prefix,
                org_id,
                f"{self.prefix}cfg:{org_id}|{counter}|{plan}",
                CONFIG_TTL_MS,
                inv or b"0",
                gen or b"0",
                "limit",
                "" if limit.limit is None else limit.limit,
                "hard",
                int(limit.is_hard),
                "threshold",
                limit.warning_threshold,
                "start",
                period[0],
                "end",
                period[1],
            ]
        )

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
        self._seed(
            args=[
                self.prefix,
                f"{org_id}|{counter}|{micros(period.start)}",
                f"{org_id}|{counter}|{day}",
                counted,
                base,
                today or 0,
                _period_ttl_ms(period, now),
                DAY_TTL_MS,
            ]
        )

    # Reading -------------------------------------------------------------------

    def total(self, *, org_id: str, counter: str, period_start: datetime) -> int | None:
        """Return the live total, or None if Redis has no count for the period."""
        if self.known_down():
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

    def unflushed_days(self, *, org_id: str, days: list[date]) -> dict[tuple, int]:
        """Return {(counter, day): what Redis counted that its row does not show}."""
        keys = [(counter, day) for counter in sorted(LIVE_COUNTERS) for day in days]
        try:
            values = self.client.mget(
                [f"{self.prefix}d:{org_id}|{c}|{d.isoformat()}" for c, d in keys]
            )
        except redis.RedisError:
            return {}
        flushed = dict(
            (((row[0], row[1]), row[2]))
            for row in UsageDaily.objects.filter(
                org_id=org_id,
                counter__in=LIVE_COUNTERS,
                day__in=days,
                shard=REDIS_SHARD,
            ).values_list("counter", "day", "value")
        )
        return {
            key: int(value) - flushed.get(key, 0)
            for key, value in zip(keys, values, strict=True)
            if value is not None and int(value) > flushed.get(key, 0)
        }

    # Invalidation --------------------------------------------------------------

    def forget_limits(self, org_id: str | None) -> None:
        """Make the next call reload the org's limits (None: every org's)."""
        if org_id is None:
            self.admin.incr(f"{self.prefix}gen")
        else:
            self.admin.incr(f"{self.prefix}inv:{org_id}")

    # Flushing ------------------------------------------------------------------

    def flush(self) -> int:
        """Copy every dirty count into the database and do the outbox.

        Return how many period counts were written.
        """
        self.do_outbox()
        written = 0
        cursor = 0
        while True:
            cursor, entries = self.admin.hscan(
                f"{self.prefix}dirty", cursor, count=FLUSH_BATCH
            )
            if entries:
                written += self._flush_batch(entries)
            if cursor == 0:
                return written

    def do_outbox(
        self, ids: list[int] | None = None, max_batches: int | None = None
    ) -> None:
        """Do the outbox's rows (those of ``ids``, or all) and delete them.

        A row is one call counted in the database, so after a long outage there
        may be many; they are done in batches, each key once per batch.
        """
        rows = LiveOutbox.objects.order_by("pk").values_list(
            "pk", "kind", "org_id", "counter", "period_start"
        )
        if ids is not None:
            rows = rows.filter(pk__in=ids)
        done = 0
        while batch := list(rows[:OUTBOX_BATCH]):
            limits, bases = set(), set()
            for _, kind, org_id, counter, period_start in batch:
                if kind == LiveOutbox.Kind.LIMITS:
                    limits.add(org_id or None)
                else:
                    bases.add((org_id, counter, period_start))
            for org_id in limits:
                self.forget_limits(org_id)
            self._raise_bases(bases)
            LiveOutbox.objects.filter(pk__in=[row[0] for row in batch]).delete()
            done += 1
            if ids is not None or done == max_batches:
                return

    def _flush_batch(self, entries: dict[bytes, bytes]) -> int:
        parsed = []
        for entry, changes in entries.items():
            org_id, counter, start, day = entry.decode().split("|")
            parsed.append((entry, changes, org_id, counter, start, day))
        existing = set(
            Organization.objects.filter(
                pk__in={item[2] for item in parsed}
            ).values_list("pk", flat=True)
        )
        with _flush_lock(exclusive=False):
            with self.admin.pipeline(transaction=False) as pipe:
                for _, _, org_id, counter, start, day in parsed:
                    pipe.get(f"{self.prefix}t:{org_id}|{counter}|{start}")
                    pipe.get(f"{self.prefix}d:{org_id}|{counter}|{day}")
                values = pipe.execute()
            written = self._write_flushed(parsed, values, existing)
        pairs = []
        for entry, changes, *_ in parsed:
            pairs += [entry, changes]
        self._clean(args=[self.prefix, *pairs])
        return written

    def _write_flushed(self, parsed: list, values: list, existing: set) -> int:
        """Write what the flush read; return how many period counts."""
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
        _write_greatest(UsageCounter, "period_start", periods)
        _write_greatest(UsageDaily, "day", days)
        return len(periods)

    def _raise_bases(self, periods: set[tuple]) -> None:
        """Raise each period's base to what the database holds beside Redis's row."""
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
        # A base made here outlives any period; seeding trims it to its count's.
        ttl = (LONGEST_PERIOD + PERIOD_TTL_AFTER_END) // timedelta(milliseconds=1)
        args = [self.prefix, "b", ttl]
        for (org_id, counter, start), base in bases.items():
            args += [f"{org_id}|{counter}|{micros(start)}", base]
        self._raise(args=args)


# Held shared by each flush from reading Redis to committing, and exclusively by
# a reconcile (PostgreSQL; SQLite runs one writer at a time anyway).
FLUSH_LOCK_ID = 0x61705F7573616765  # "ap_usage"


@contextmanager
def _flush_lock(*, exclusive: bool):
    with transaction.atomic():
        if connection.vendor == "postgresql":
            function = (
                "pg_advisory_xact_lock"
                if exclusive
                else ("pg_advisory_xact_lock_shared")
            )
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT {function}(%s)", [FLUSH_LOCK_ID])
        yield


def _period_ttl_ms(period: Period, now: datetime) -> int:
    # Kept a while past the period's end, for late flushes and reads.
    ttl = max(period.end, now) + PERIOD_TTL_AFTER_END - now
    return max(int(ttl.total_seconds() * 1000), 1)


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


def record_for_redis(**fields) -> None:
    """Add an outbox row and do it once this transaction commits.

    If Redis does not answer then, the next flush does it.
    """
    row = LiveOutbox.objects.create(**fields)

    def do() -> None:
        counts = live_counts()
        if counts is None or counts.known_down():
            return  # the flush does it, once Redis answers
        try:
            counts.do_outbox(ids=[row.pk])
        except (redis.RedisError, DatabaseError):
            logger.warning("usage redis unavailable: %s left for the flush", row)

    transaction.on_commit(do)


_live: LiveCounts | None = None
_live_key: tuple[str, str] | None = None


def live_counts() -> LiveCounts | None:
    """Return the Redis side if USAGE_REDIS_URL is set, else None."""
    global _live, _live_key
    url = settings.USAGE_REDIS_URL
    if not url:
        return None
    key = (url, settings.USAGE_REDIS_PREFIX)
    if _live is None or _live_key != key:
        _live = LiveCounts(*key)
        _live_key = key
    return _live

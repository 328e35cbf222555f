"""
Writing usage counters: the hot path of every API request.

Why shards: a single row per org and counter serialises every request of a busy
org on that row's lock, held until the commit is flushed. So a counter is kept
in up to SHARDS rows per period and read as their sum; an increment goes to a
random shard, and concurrent requests rarely wait for each other.

Hard limits cannot be split that way and stay exact, so a hard-limited counter
is written only to shard 0 with a conditional update: "add n if the total stays
within the limit". PostgreSQL's row lock orders the concurrent updates and
re-checks the condition against the latest value, so exactly as many pass as
the limit allows. Shards other than 0 (left from a time the counter was soft)
are added into the condition.

Each write also adds to the day's row in UsageDaily, in the same transaction,
so history needs no rollup job.

On PostgreSQL a charge is one call of the ``usage_count`` function (installed
after every migrate, see usage.apps): it reads the org's period, its plan's
limit and its override, and counts, in one round trip. A function rather than
a long statement because PostgreSQL keeps its statements' plans for the
session, which Django's client-side parameters otherwise prevent (planning cost
as much as running); unlike prepared statements, that is safe behind
transaction-mode connection poolers. SQLite, which serialises all writers, runs
the same steps as separate statements in Python.

Durability: every increment is committed to the database before the request
goes on, so a crash of the process that counted loses nothing. A soft increment
made outside any transaction (the ``api_calls`` of a request) commits with
``synchronous_commit = off`` when USAGE_SOFT_ASYNC_COMMIT is on: the commit does
not wait for the WAL flush, which is what caps a busy org's throughput. Only a
crash of the PostgreSQL server itself can lose the last fraction of a second of
such soft counts (never corrupt them). Hard limits and charges inside a larger
transaction always commit synchronously.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, datetime

import psycopg
from django.conf import settings
from django.db import connection, transaction

from agentpost.orgs.models import Organization
from usage.models import LimitOverride, PlanLimit, UsageCounter, UsageDaily

# Enough that 8-16 concurrent writers of one counter rarely pick the same row,
# few enough that summing them stays a short index scan.
SHARDS = 16


def is_postgres() -> bool:
    return connection.vendor == "postgresql"


def pick_shard() -> int:
    return random.randrange(SHARDS)


def _tables() -> tuple[str, str]:
    quote = connection.ops.quote_name
    return quote(UsageCounter._meta.db_table), quote(UsageDaily._meta.db_table)


def _db_datetime(value: datetime):
    # As the ORM stores it (SQLite keeps naive UTC text), so raw and ORM
    # queries find the same rows.
    return connection.ops.adapt_datetimefield_value(value)


def total(*, org_id: str, counter: str, period_start: datetime) -> int:
    """Return the counter's value: the sum of its shards, or its live total.

    A counter kept in Redis (usage.live) reads its live total there, since its
    row in the database lags by up to a flush.
    """
    from usage import live

    if counter in live.LIVE_COUNTERS and (counts := live.live_counts()):
        live_total = counts.total(
            org_id=org_id, counter=counter, period_start=period_start
        )
        if live_total is not None:
            return live_total
    counters, _ = _tables()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COALESCE(SUM(value), 0) FROM {counters}"
            " WHERE org_id = %s AND counter = %s AND period_start = %s",
            [org_id, counter, _db_datetime(period_start)],
        )
        return int(cursor.fetchone()[0])


# PostgreSQL ------------------------------------------------------------------


def function_sql() -> str:
    """Return the CREATE FUNCTION statement of ``usage_count``."""
    counters, daily = _tables()
    quote = connection.ops.quote_name
    org = quote(Organization._meta.db_table)
    plan_limits = quote(PlanLimit._meta.db_table)
    overrides = quote(LimitOverride._meta.db_table)
    return f"""
CREATE OR REPLACE FUNCTION usage_count(
    p_org varchar, p_counter varchar, p_plan varchar, p_now timestamptz,
    p_month_start timestamptz, p_fixed_start timestamptz, p_day date,
    p_amount bigint, p_enforce boolean, p_shard integer, p_lax boolean,
    OUT found_org boolean, OUT org_start timestamptz, OUT org_end timestamptz,
    OUT plan_limit bigint, OUT plan_mode varchar, OUT plan_threshold integer,
    OUT own_limit bigint, OUT own_mode varchar, OUT own_threshold integer,
    OUT total bigint, OUT refused boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_start timestamptz;
    v_limit bigint;
    v_hard boolean;
    v_shard integer := p_shard;  -- the counter's
    v_others bigint;
    v_value bigint;
BEGIN
    refused := false;
    SELECT o.current_period_start, o.current_period_end,
            l."limit", l.mode, l.warning_threshold,
            v."limit", v.mode, v.warning_threshold
        INTO org_start, org_end, plan_limit, plan_mode, plan_threshold,
            own_limit, own_mode, own_threshold
        FROM {org} o
        LEFT JOIN {plan_limits} l
            ON l.plan_id = COALESCE(p_plan, o.plan) AND l.counter = p_counter
        LEFT JOIN {overrides} v ON v.org_id = o.id AND v.counter = p_counter
        WHERE o.id = p_org;
    found_org := FOUND;
    IF NOT found_org THEN
        RETURN;
    END IF;

    -- As usage.limits.resolve and usage.periods.period_between decide.
    v_limit := COALESCE(own_limit, plan_limit);
    v_hard := v_limit IS NOT NULL
        AND COALESCE(NULLIF(own_mode, ''), plan_mode) = 'hard';
    IF p_fixed_start IS NOT NULL THEN
        v_start := p_fixed_start;
    ELSIF org_start <= p_now AND p_now < org_end THEN
        v_start := org_start;
    ELSE
        v_start := p_month_start;
    END IF;

    IF v_hard THEN
        v_shard := 0;  -- the one row a hard limit is kept in
    ELSIF p_lax THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;

    IF v_hard AND p_enforce THEN
        SELECT COALESCE(SUM(s.value), 0) INTO v_others FROM {counters} s
            WHERE s.org_id = p_org AND s.counter = p_counter
            AND s.period_start = v_start AND s.shard <> 0;
        -- Exact: the row lock on shard 0 orders concurrent callers, and the
        -- WHERE is re-checked against the row each one waited for.
        FOR attempt IN 1..2 LOOP
            UPDATE {counters} c SET value = c.value + p_amount
                WHERE c.org_id = p_org AND c.counter = p_counter
                AND c.period_start = v_start AND c.shard = 0
                AND c.value + p_amount + v_others <= v_limit
                RETURNING c.value INTO v_value;
            EXIT WHEN FOUND OR attempt = 2;
            -- The period's first write finds no row: make it, and try again.
            INSERT INTO {counters} (org_id, counter, period_start, shard, value)
                VALUES (p_org, p_counter, v_start, 0, 0)
                ON CONFLICT (org_id, counter, period_start, shard) DO NOTHING;
        END LOOP;
        IF v_value IS NULL THEN
            refused := true;
            SELECT COALESCE(SUM(s.value), 0) INTO total FROM {counters} s
                WHERE s.org_id = p_org AND s.counter = p_counter
                AND s.period_start = v_start;
            RETURN;
        END IF;
        total := v_value + v_others;
    ELSE
        INSERT INTO {counters} AS c (org_id, counter, period_start, shard, value)
            VALUES (p_org, p_counter, v_start, v_shard, p_amount)
            ON CONFLICT (org_id, counter, period_start, shard)
            DO UPDATE SET value = c.value + EXCLUDED.value;
        SELECT COALESCE(SUM(s.value), 0) INTO total FROM {counters} s
            WHERE s.org_id = p_org AND s.counter = p_counter
            AND s.period_start = v_start;
    END IF;

    -- The day's row after the counter's, in every path, so locks are always
    -- taken in one order. Taking it first would be worse for hard limits: a
    -- caller queued for shard 0 would hold a day row that others then queue
    -- for, and the queue at shard 0 would run dry.
    INSERT INTO {daily} AS d (org_id, counter, day, shard, value)
        VALUES (p_org, p_counter, p_day, p_shard, p_amount)
        ON CONFLICT (org_id, counter, day, shard)
        DO UPDATE SET value = d.value + EXCLUDED.value;
END
$$;
"""


def install_function(using_connection) -> None:
    """Create or replace ``usage_count`` (called after every migrate)."""
    if using_connection.vendor != "postgresql":
        return
    with using_connection.cursor() as cursor:
        cursor.execute(function_sql())


@dataclass(frozen=True)
class Counted:
    plan: tuple  # the plan's (limit, mode, warning_threshold), nulls if none
    override: tuple  # the org's own, nulls if none
    org_period_start: datetime | None
    org_period_end: datetime | None
    total: int
    refused: bool  # a hard limit refused it; nothing was written


def count_in_database(
    *,
    org_id: str,
    counter: str,
    plan: str | None,
    now: datetime,
    month_start: datetime,
    fixed_start: datetime | None,
    day: date,
    amount: int,
    enforce: bool,
) -> Counted:
    """Count ``amount`` in one round trip, within a hard limit if there is one.

    PostgreSQL only. ``plan`` forces a plan code (None: the org's own);
    ``fixed_start`` is the period_start of a level counter.
    """
    lax = not connection.in_atomic_block and settings.USAGE_SOFT_ASYNC_COMMIT
    # A plain psycopg cursor on Django's connection (so in its transaction):
    # it sends the parameters apart from the SQL instead of quoting them into
    # it, which saves a third of this path's CPU in the client.
    connection.ensure_connection()
    with (
        connection.wrap_database_errors,
        psycopg.Cursor(connection.connection) as cursor,
    ):
        cursor.execute(
            "SELECT * FROM usage_count(%s::varchar, %s::varchar, %s::varchar,"
            " %s::timestamptz, %s::timestamptz, %s::timestamptz, %s::date,"
            " %s::bigint, %s::boolean, %s::integer, %s::boolean)",
            [
                org_id,
                counter,
                plan,
                now,
                month_start,
                fixed_start,
                day,
                amount,
                enforce,
                pick_shard(),
                lax,
            ],
        )
        row = cursor.fetchone()
    if not row[0]:
        raise Organization.DoesNotExist(org_id)
    return Counted(
        org_period_start=row[1],
        org_period_end=row[2],
        plan=tuple(row[3:6]),
        override=tuple(row[6:9]),
        total=int(row[9]),
        refused=row[10],
    )


# SQLite (and any database without the function) -------------------------------


def add(
    *,
    org_id: str,
    counter: str,
    period_start: datetime,
    day: date,
    amount: int,
    shard: int,
) -> int:
    """Add ``amount`` (may be negative) to one shard and the day; return the total."""
    counters, daily = _tables()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {counters} (org_id, counter, period_start, shard, value)"
            " VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (org_id, counter, period_start, shard)"
            f" DO UPDATE SET value = {counters}.value + EXCLUDED.value",
            [org_id, counter, _db_datetime(period_start), shard, amount],
        )
        _add_day(
            cursor, org_id=org_id, counter=counter, day=day, shard=shard, amount=amount
        )
    return total(org_id=org_id, counter=counter, period_start=period_start)


def add_within(
    *,
    org_id: str,
    counter: str,
    period_start: datetime,
    day: date,
    amount: int,
    limit: int,
) -> int | None:
    """Add ``amount`` to shard 0 if the total stays within ``limit``.

    Return the new total, or None (and change nothing) if it would pass the limit.
    On SQLite a transaction takes the write lock when it begins (IMMEDIATE), so
    these statements run alone.
    """
    counters, _ = _tables()
    key = [org_id, counter, _db_datetime(period_start)]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {counters} (org_id, counter, period_start, shard, value)"
            " VALUES (%s, %s, %s, 0, 0)"
            " ON CONFLICT (org_id, counter, period_start, shard) DO NOTHING",
            key,
        )
        cursor.execute(
            f"UPDATE {counters} SET value = value + %s"
            " WHERE org_id = %s AND counter = %s AND period_start = %s AND shard = 0"
            f" AND value + %s + (SELECT COALESCE(SUM(value), 0) FROM {counters}"
            " WHERE org_id = %s AND counter = %s AND period_start = %s"
            " AND shard <> 0) <= %s",
            [amount, *key, amount, *key, limit],
        )
        if cursor.rowcount != 1:
            return None
        _add_day(
            cursor, org_id=org_id, counter=counter, day=day, shard=0, amount=amount
        )
    return total(org_id=org_id, counter=counter, period_start=period_start)


def _add_day(cursor, *, org_id: str, counter: str, day: date, shard: int, amount: int):
    _, daily = _tables()
    cursor.execute(
        f"INSERT INTO {daily} (org_id, counter, day, shard, value)"
        " VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (org_id, counter, day, shard)"
        f" DO UPDATE SET value = {daily}.value + EXCLUDED.value",
        [org_id, counter, connection.ops.adapt_datefield_value(day), shard, amount],
    )

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

Each write also adds to the day's row in UsageDaily, in the same statement on
PostgreSQL, so history costs no extra round trip and no rollup job.

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
from datetime import date, datetime

from django.conf import settings
from django.db import connection, transaction

from usage.models import UsageCounter, UsageDaily

# Enough that 8-16 concurrent writers of one counter rarely pick the same row,
# few enough that summing them stays a short index scan.
SHARDS = 16


def _tables() -> tuple[str, str]:
    quote = connection.ops.quote_name
    return quote(UsageCounter._meta.db_table), quote(UsageDaily._meta.db_table)


def _is_postgres() -> bool:
    return connection.vendor == "postgresql"


def pick_shard() -> int:
    return random.randrange(SHARDS)


def _db_datetime(value: datetime):
    # As the ORM stores it (SQLite keeps naive UTC text), so raw and ORM
    # queries find the same rows.
    return connection.ops.adapt_datetimefield_value(value)


def total(*, org_id: str, counter: str, period_start: datetime) -> int:
    """Return the counter's value: the sum of its shards."""
    counters, _ = _tables()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COALESCE(SUM(value), 0) FROM {counters}"
            " WHERE org_id = %s AND counter = %s AND period_start = %s",
            [org_id, counter, _db_datetime(period_start)],
        )
        return int(cursor.fetchone()[0])


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
    db_start = _db_datetime(period_start)
    db_day = connection.ops.adapt_datefield_value(day)
    upsert_counter = (
        f"INSERT INTO {counters} (org_id, counter, period_start, shard, value)"
        " VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (org_id, counter, period_start, shard)"
        f" DO UPDATE SET value = {counters}.value + EXCLUDED.value"
    )
    upsert_daily = (
        f"INSERT INTO {daily} (org_id, counter, day, shard, value)"
        " VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (org_id, counter, day, shard)"
        f" DO UPDATE SET value = {daily}.value + EXCLUDED.value"
    )
    counter_params = [org_id, counter, db_start, shard, amount]
    daily_params = [org_id, counter, db_day, shard, amount]

    if _is_postgres():
        # One round trip. The outer SELECT sees the table as it was before the
        # upsert, so the other shards plus the upserted row make the total.
        standalone = not connection.in_atomic_block
        asynchronous = standalone and settings.USAGE_SOFT_ASYNC_COMMIT
        sql = (
            "WITH"
            + (
                " cfg AS (SELECT set_config('synchronous_commit', 'off', true) AS v),"
                if asynchronous
                else ""
            )
            + f" up AS ({upsert_counter} RETURNING value),"
            f" d AS ({upsert_daily})"
            " SELECT (SELECT value FROM up) + COALESCE((SELECT SUM(value)"
            f" FROM {counters} WHERE org_id = %s AND counter = %s"
            " AND period_start = %s AND shard <> %s), 0)"
            + (", (SELECT v FROM cfg)" if asynchronous else "")
        )
        with connection.cursor() as cursor:
            cursor.execute(
                sql,
                counter_params + daily_params + [org_id, counter, db_start, shard],
            )
            return int(cursor.fetchone()[0])

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(upsert_counter, counter_params)
        cursor.execute(upsert_daily, daily_params)
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
    """
    result = _add_within(
        org_id=org_id,
        counter=counter,
        period_start=period_start,
        day=day,
        amount=amount,
        limit=limit,
    )
    if result is not None:
        return result
    # The first write of a period finds no row to update: create it at zero
    # (a concurrent request may do the same) and try once more.
    # A refusal pays this extra round trip too, which is fine: it is rare.
    counters, _ = _tables()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {counters} (org_id, counter, period_start, shard, value)"
            " VALUES (%s, %s, %s, 0, 0)"
            " ON CONFLICT (org_id, counter, period_start, shard) DO NOTHING",
            [org_id, counter, _db_datetime(period_start)],
        )
    return _add_within(
        org_id=org_id,
        counter=counter,
        period_start=period_start,
        day=day,
        amount=amount,
        limit=limit,
    )


def _add_within(
    *,
    org_id: str,
    counter: str,
    period_start: datetime,
    day: date,
    amount: int,
    limit: int,
) -> int | None:
    counters, daily = _tables()
    key = [org_id, counter, _db_datetime(period_start)]
    day = connection.ops.adapt_datefield_value(day)
    others = (
        f"SELECT COALESCE(SUM(value), 0) AS s FROM {counters}"
        " WHERE org_id = %s AND counter = %s AND period_start = %s AND shard <> 0"
    )
    gate = (
        f"UPDATE {counters} SET value = value + %s"
        " WHERE org_id = %s AND counter = %s AND period_start = %s AND shard = 0"
        " AND value + %s + (SELECT s FROM o) <= %s"
    )
    upsert_daily = (
        f"INSERT INTO {daily} (org_id, counter, day, shard, value)"
        " SELECT %s, %s, %s, 0, %s"
    )
    on_conflict = (
        " ON CONFLICT (org_id, counter, day, shard)"
        f" DO UPDATE SET value = {daily}.value + EXCLUDED.value"
    )
    gate_params = [amount, *key, amount, limit]
    daily_params = [org_id, counter, day, amount]

    if _is_postgres():
        # One round trip; the row lock on shard 0 orders concurrent requests,
        # and PostgreSQL re-checks the WHERE against the row it waited for.
        sql = (
            f"WITH o AS ({others}) ,"
            f" g AS ({gate} RETURNING value),"
            f" d AS ({upsert_daily} FROM g{on_conflict})"
            " SELECT g.value + (SELECT s FROM o) FROM g"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, key + gate_params + daily_params)
            row = cursor.fetchone()
        return int(row[0]) if row else None

    # SQLite: transactions take the write lock when they begin (IMMEDIATE), so
    # these statements run alone.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            gate.replace("(SELECT s FROM o)", f"({others})"),
            gate_params[:5] + key + gate_params[5:],
        )
        if cursor.rowcount != 1:
            return None
        cursor.execute(f"{upsert_daily} WHERE true{on_conflict}", daily_params)
    return total(org_id=org_id, counter=counter, period_start=period_start)

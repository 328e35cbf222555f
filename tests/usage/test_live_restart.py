"""
A Redis server of the test's own, killed and started again: with its data
lost, or restored from an older snapshot (as after a crash with AOF's last
second lost, or a failover to a replica that lagged).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import uuid
from datetime import UTC, date, datetime

import pytest
import redis
import time_machine
from django.db import connection

from agentpost.metering import QuotaExceeded
from tests.usage.conftest import postgres_only, set_plan_limit
from tests.usage.test_live import call, database_value
from usage import live
from usage.models import UsageCounter, UsageDaily

pytestmark = pytest.mark.usefixtures("frozen_clock")
MARCH_11 = datetime(2026, 3, 11, 9, 0, tzinfo=UTC)


class RedisServer:
    """redis-server on a free loopback port, with its snapshot in ``directory``."""

    def __init__(self, directory) -> None:
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def crash(self) -> None:
        if self.process:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def server(settings, tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("needs redis-server (Debian's redis-server package)")
    server = RedisServer(tmp_path)
    server.start()
    settings.USAGE_REDIS_URL = f"redis://127.0.0.1:{server.port}/0"
    settings.USAGE_REDIS_PREFIX = f"test:{uuid.uuid4().hex}:"
    settings.USAGE_REDIS_TIMEOUT_SECONDS = 2
    yield server
    server.crash()


def attempts(org, tries: int) -> int:
    passed = 0
    for _ in range(tries):
        try:
            call(org.pk)
            passed += 1
        except QuotaExceeded:
            pass
    return passed


def test_redis_back_from_an_older_snapshot_neither_loses_nor_overshoots(
    billing, server, org
):
    set_plan_limit("free", "api_calls", 5, "hard")
    counts = live.live_counts()
    passed = attempts(org, 2)
    counts.admin.save()  # what Redis will come back with: 2
    passed += attempts(org, 3)
    counts.flush()  # the database has 5
    server.crash()
    server.start()

    passed += attempts(org, 5)
    counts.flush()

    assert passed == 5
    assert database_value(UsageCounter, org) == 5


def test_redis_back_empty_counts_on_from_the_database(billing, server, org):
    counts = live.live_counts()
    attempts(org, 3)
    counts.flush()
    server.crash()
    server.start()

    assert call(org.pk).current == 4
    counts.flush()
    assert database_value(UsageCounter, org) == 4


def test_a_limit_lowered_after_the_snapshot_is_not_rolled_back(
    billing, server, org, django_capture_on_commit_callbacks
):
    from usage.models import LimitOverride

    counts = live.live_counts()
    attempts(org, 2)
    counts.admin.save()  # with the limit of the free plan cached
    with django_capture_on_commit_callbacks(execute=True):
        LimitOverride.objects.create(
            org=org,
            counter="api_calls",
            limit=3,
            mode="hard",
            updated_at=org.created_at,
        )
    counts.flush()
    server.crash()
    server.start()

    assert attempts(org, 5) == 1


def test_a_base_lives_as_long_as_its_count(
    billing, counts, org, django_capture_on_commit_callbacks
):
    set_plan_limit("free", "api_calls", None, "soft")
    with django_capture_on_commit_callbacks(execute=True):
        org.current_period_start = datetime(2026, 3, 1, tzinfo=UTC)
        org.current_period_end = datetime(2027, 3, 1, tzinfo=UTC)  # a year
        org.save()
    # Counted in the database while Redis was away; Redis learns of it (a base
    # and no count yet) at the flush.
    counts._down_until = time.monotonic() + 60
    for _ in range(6):
        call(org.pk)
    counts._down_until = 0
    counts.flush()

    assert call(org.pk).current == 7
    key = f"{org.pk}|api_calls|{live.micros(org.current_period_start)}"
    base_ttl = counts.client.pttl(f"{counts.prefix}b:{key}")
    count_ttl = counts.client.pttl(f"{counts.prefix}t:{key}")
    assert abs(base_ttl - count_ttl) < 60_000
    assert count_ttl > 360 * 86_400_000


def test_a_restore_from_before_today_keeps_the_calls_flushed_today(
    billing, server, org
):
    set_plan_limit("free", "api_calls", None, "soft")
    counts = live.live_counts()
    call(org.pk)  # March 10
    counts.flush()
    counts.admin.save()  # the snapshot Redis comes back with: no March 11 yet
    with time_machine.travel(MARCH_11, tick=False):
        for _ in range(3):
            call(org.pk, now=MARCH_11)
        counts.flush()  # the database has 3 for March 11
        server.crash()
        server.start()

        call(org.pk, now=MARCH_11)
        counts.flush()

    assert database_value(UsageCounter, org) == 5  # the period count is fine
    assert database_value(UsageDaily, org, day=date(2026, 3, 11)) == 4


@postgres_only  # SQLite has no advisory locks; it runs one writer at a time
@pytest.mark.django_db(transaction=True)
def test_a_flush_in_flight_across_a_restart_is_not_lost_by_reconcile(
    billing, server, org, monkeypatch
):
    set_plan_limit("free", "api_calls", 6, "hard")
    counts = live.live_counts()
    passed = attempts(org, 2)
    counts.flush()  # database: 2
    counts.admin.save()  # snapshot: 2
    passed += attempts(org, 3)  # Redis: 5

    write = live._write_greatest
    elsewhere: list[threading.Thread] = []
    results: list[int] = []

    def another_process_calls() -> None:
        try:
            results.append(attempts(org, 1))  # its call reconciles the new server
        finally:
            connection.close()

    def write_after_a_restart(model, field, values):
        # The flush has read 5 from the old server; before its write commits,
        # the server comes back from the snapshot (2) and another process
        # reconciles it.
        if model is UsageCounter and not elsewhere:
            server.crash()
            server.start()
            elsewhere.append(threading.Thread(target=another_process_calls))
            elsewhere[0].start()
            time.sleep(0.2)
        write(model, field, values)

    monkeypatch.setattr(live, "_write_greatest", write_after_a_restart)
    counts.flush()
    monkeypatch.setattr(live, "_write_greatest", write)
    elsewhere[0].join(timeout=30)
    passed += sum(results)

    passed += attempts(org, 5)
    counts.flush()
    assert passed == 6
    assert database_value(UsageCounter, org) == 6


def test_a_reconcile_that_died_holds_requests_up_briefly(billing, server, org):
    set_plan_limit("free", "api_calls", None, "soft")
    counts = live.live_counts()
    lock = f"{counts.prefix}reconciling"
    counts.admin.set(lock, "a process that died", px=live.RECONCILE_LOCK_MS)

    started = time.monotonic()
    assert call(org.pk).current == 1  # counted in the database meanwhile
    assert time.monotonic() - started < live.RECONCILE_WAIT_SECONDS + 0.5
    assert database_value(UsageCounter, org) == 1

    counts.admin.pexpire(lock, 1)  # its lock lapses
    time.sleep(0.01)
    counts._down_until = 0
    assert call(org.pk).current == 2  # reconciled here, and counted in Redis
    assert counts.admin.get(f"{counts.prefix}server") is not None


def test_a_limit_loaded_across_a_restart_is_not_cached_stale(
    billing, server, org, monkeypatch
):
    set_plan_limit("free", "api_calls", 100, "hard")
    counts = live.live_counts()
    call(org.pk)  # reconciles the new server: gen 1
    counts.flush()
    counts.admin.save()  # snapshot: gen 1
    counts.forget_limits(None)  # some plan saved: gen 2

    load = live.load_charge_context
    done = []

    def load_while_the_limit_drops_and_redis_restarts(**kwargs):
        loaded = load(**kwargs)  # the limit of 100
        if not done:
            done.append(1)
            set_plan_limit("free", "api_calls", 3, "hard")
            counts.forget_limits(None)  # its outbox row, done on the old server
            server.crash()
            server.start()  # gen 1 again
            counts.reconcile()  # another process's request: gen 2
        return loaded

    monkeypatch.setattr(
        live, "load_charge_context", load_while_the_limit_drops_and_redis_restarts
    )
    call(org.pk)  # the second call
    monkeypatch.setattr(live, "load_charge_context", load)

    assert attempts(org, 5) == 1  # the third; the limit is 3


class RestrictedRedis(RedisServer):
    """A Redis whose application user may not run INFO (ACL -@dangerous)."""

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--user",
                "app",
                "on",
                ">secret",
                "~*",
                "&*",
                "+@all",
                "-@dangerous",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()


def test_a_redis_that_refuses_info_is_reported_and_not_counted_on(
    billing, settings, tmp_path, org
):
    from agentpost.checks import check_usage_counts_in_redis

    restricted = RestrictedRedis(tmp_path)
    restricted.start()
    try:
        settings.USAGE_REDIS_URL = f"redis://app:secret@127.0.0.1:{restricted.port}/0"
        settings.USAGE_REDIS_PREFIX = f"test:{uuid.uuid4().hex}:"
        set_plan_limit("free", "api_calls", 100, "soft")

        assert call(org.pk).current == 1  # in the database
        assert live.live_counts().known_down()
        [error] = check_usage_counts_in_redis(None)
        assert error.id == "agentpost.E001"
    finally:
        restricted.crash()

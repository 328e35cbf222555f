"""
A Redis server of the test's own, killed and started again: with its data
lost, or restored from an older snapshot (as after a crash with AOF's last
second lost, or a failover to a replica that lagged).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from datetime import UTC, datetime

import pytest
import redis

from agentpost.metering import QuotaExceeded
from tests.usage.conftest import set_plan_limit
from tests.usage.test_live import call, database_value
from usage import live
from usage.models import UsageCounter

pytestmark = pytest.mark.usefixtures("frozen_clock")


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

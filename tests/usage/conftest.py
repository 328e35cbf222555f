"""
Usage tests run with billing on and the default plans, as a hosted AgentPost
would; ``org`` is on the free plan (hard limits) unless a test moves it.
"""

from __future__ import annotations

import os
import uuid

import pytest
import redis
import time_machine
from django.db import connection

from tests.conftest import CURRENT_TIME
from usage.models import Plan, PlanLimit
from usage.plans import seed_plans


@pytest.fixture(autouse=True)
def plans(db):
    # The test database is built without migrations, so the seed migration
    # does not run.
    seed_plans(Plan, PlanLimit)


@pytest.fixture
def billing(settings):
    settings.BILLING_ENABLED = True


def set_plan_limit(plan: str, counter: str, limit: int | None, mode: str) -> None:
    PlanLimit.objects.filter(plan_id=plan, counter=counter).update(
        limit=limit, mode=mode
    )


postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="needs PostgreSQL: SQLite serialises all writers, so it cannot show "
    "concurrent counting; CI runs these on PostgreSQL",
)


REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def counts(settings):
    """Count api_calls in Redis (usage.live), under keys of this test's own.

    Needs a Redis server: REDIS_URL, or one on loopback. Without one the test is
    skipped, unless REDIS_URL is set (as CI sets it): then it fails.
    """
    from usage import live

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.ConnectionError:
        if "REDIS_URL" in os.environ:
            raise
        pytest.skip(f"no Redis at {REDIS_URL}")
    settings.USAGE_REDIS_URL = REDIS_URL
    settings.USAGE_REDIS_PREFIX = prefix = f"test:{uuid.uuid4().hex}:"
    yield live.live_counts()
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def frozen_clock():
    with time_machine.travel(CURRENT_TIME, tick=False):
        yield

"""
Usage tests run with billing on and the default plans, as a hosted AgentPost
would; ``org`` is on the free plan (hard limits) unless a test moves it.
"""

from __future__ import annotations

import pytest
from django.db import connection

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

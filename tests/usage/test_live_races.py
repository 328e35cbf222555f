"""
usage.live under attack: flushes racing calls and limit changes, flushes cut
short, billing periods that move or lapse, deleted orgs.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import time_machine

from agentpost.metering import QuotaExceeded
from tests.conftest import CURRENT_TIME
from tests.usage.conftest import postgres_only, set_plan_limit
from tests.usage.test_concurrency import run_together
from tests.usage.test_live import MARCH, call, database_value
from usage import live
from usage.models import UsageCounter, UsageDaily

pytestmark = pytest.mark.usefixtures("frozen_clock")


@pytest.fixture
def other_org(db):
    from agentpost.orgs.services import create_org

    return create_org(
        name="Other", owner_email="o@other.test", owner_password="pw-other-1"
    ).org


@postgres_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_charges_racing_two_flushers_and_invalidations(billing, counts, org, mode):
    limit = 10**9 if mode == "soft" else 150
    set_plan_limit("free", "api_calls", limit, mode)
    clients = 8
    finished = []

    def work(i: int) -> int:
        if i < 2:  # two flushers, until every client is done
            while len(finished) < clients:
                counts.flush()
            return 0
        if i == 2:  # limits edited, over and over
            time.sleep(0.01)
            for _ in range(6):  # one Plan saved with its 5 limits inline
                counts.forget_limits(None)
            return 0
        passed = 0
        try:
            for _ in range(40):
                try:
                    call(org.pk)
                    passed += 1
                except QuotaExceeded as exc:
                    assert exc.current == limit
        finally:
            finished.append(i)
        return passed

    results = run_together(clients + 3, work)
    counts.flush()
    expected = clients * 40 if mode == "soft" else limit
    assert sum(results) == expected
    assert (
        counts.total(org_id=org.pk, counter="api_calls", period_start=MARCH) == expected
    )
    assert database_value(UsageCounter, org) == expected
    assert database_value(UsageDaily, org) == expected


@pytest.mark.parametrize("step", ["_write_greatest", "_clean"])
def test_a_flush_cut_short_at_any_step_is_redone(
    billing, counts, org, monkeypatch, step
):
    for _ in range(3):
        call(org.pk)
    target = live if step == "_write_greatest" else counts

    def boom(*args, **kwargs):
        call(org.pk)  # and a call lands meanwhile
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(target, step, boom)
        with pytest.raises(RuntimeError):
            counts.flush()
    counts.flush()
    assert database_value(UsageCounter, org) == 4
    assert database_value(UsageDaily, org) == 4
    assert not counts.client.hlen(f"{counts.prefix}dirty")


def test_month_rollover_and_a_lapsed_billing_period(
    billing, counts, org, django_capture_on_commit_callbacks
):
    set_plan_limit("free", "api_calls", 3, "hard")
    with django_capture_on_commit_callbacks(execute=True):
        org.current_period_start = datetime(2026, 2, 20, tzinfo=UTC)
        org.current_period_end = datetime(2026, 3, 20, tzinfo=UTC)
        org.save()
    for _ in range(3):
        call(org.pk)
    with pytest.raises(QuotaExceeded):
        call(org.pk)
    lapsed = datetime(2026, 3, 25, tzinfo=UTC)  # lapsed: the calendar month
    with time_machine.travel(lapsed, tick=False):
        assert call(org.pk, now=lapsed).current == 1
        assert call(org.pk, now=lapsed).resets_at == datetime(2026, 4, 1, tzinfo=UTC)
    counts.flush()
    assert (
        UsageCounter.objects.get(
            org=org, period_start=datetime(2026, 2, 20, tzinfo=UTC)
        ).value
        == 3
    )
    assert UsageCounter.objects.get(org=org, period_start=MARCH).value == 2


def test_enforce_false_past_a_hard_limit_then_refused(billing, counts, org):
    set_plan_limit("free", "api_calls", 2, "hard")
    for _ in range(4):
        charge = call(org.pk, enforce=False)
    assert charge.current == 4 and charge.over_limit
    with pytest.raises(QuotaExceeded) as refused:
        call(org.pk)
    assert refused.value.current == 4
    counts.flush()
    assert database_value(UsageCounter, org) == 4


def test_other_orgs_are_untouched(billing, counts, org, other_org):
    for _ in range(3):
        call(org.pk)
    call(other_org.pk)
    counts.flush()
    assert database_value(UsageCounter, org) == 3
    assert database_value(UsageCounter, other_org) == 1


def test_deleted_org_is_dropped_by_the_flush(billing, counts, org, other_org):
    call(org.pk)
    call(other_org.pk)
    other_org.delete()
    counts.flush()
    assert database_value(UsageCounter, org) == 1
    assert not counts.client.hlen(f"{counts.prefix}dirty")


def test_a_limit_change_committing_while_another_loads_the_config(
    billing, counts, org, monkeypatch, django_capture_on_commit_callbacks
):
    from usage.models import LimitOverride

    for _ in range(3):
        call(org.pk)
    counts.forget_limits(org.pk)  # the next call reloads
    load = live.load_charge_context

    changed = []

    def old_values_then_the_change_commits(**kwargs):
        result = load(**kwargs)
        if changed:
            return result
        changed.append(1)
        with django_capture_on_commit_callbacks(execute=True):
            LimitOverride.objects.create(
                org=org,
                counter="api_calls",
                limit=4,
                mode="hard",
                updated_at=CURRENT_TIME,
            )
        return result

    with monkeypatch.context() as patch:
        patch.setattr(live, "load_charge_context", old_values_then_the_change_commits)
        call(org.pk)  # 4: under the old limit, or the new one
    with pytest.raises(QuotaExceeded):
        call(org.pk)


def test_a_billing_period_set_mid_month_starts_at_zero(
    billing, counts, org, django_capture_on_commit_callbacks
):
    for _ in range(3):
        call(org.pk)
    with django_capture_on_commit_callbacks(execute=True):
        org.current_period_start = datetime(2026, 3, 10, tzinfo=UTC)
        org.current_period_end = datetime(2026, 4, 10, tzinfo=UTC)
        org.save()
    charge = call(org.pk)
    assert charge.current == 1
    assert charge.resets_at == datetime(2026, 4, 10, tzinfo=UTC)

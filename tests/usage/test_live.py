"""
api_calls counted in Redis (usage.live): exact, flushed to the database, seeded
back from it, and counted in the database while Redis is away.

These need a Redis server (see the ``counts`` fixture).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from datetime import UTC, datetime

import pytest
import redis
import time_machine
from django.db import connections

from agentpost import metering
from agentpost.metering import QuotaExceeded, UsageUnavailable
from tests.conftest import CURRENT_TIME
from tests.usage.conftest import postgres_only, set_plan_limit
from tests.usage.test_concurrency import run_together
from usage import live
from usage.models import LiveOutbox, UsageCounter, UsageDaily
from usage.periods import month_period

MARCH = month_period(CURRENT_TIME).start
# The API stamps its calls with the clock; direct calls below use the same time.
pytestmark = pytest.mark.usefixtures("frozen_clock")


def call(org_id: str, now: datetime = CURRENT_TIME, enforce=True, amount=1):
    return metering.charge(
        org_id=org_id,
        counter=metering.API_CALLS,
        now=now,
        enforce=enforce,
        amount=amount,
    )


def database_value(model, org, **where) -> int:
    row = model.objects.filter(org=org, counter="api_calls", **where)
    return sum(row.values_list("value", flat=True))


def test_calls_are_counted_live_and_reach_the_database_at_the_flush(
    billing, counts, api, org
):
    for _ in range(3):
        assert api.get(f"/organizations/{org.id}").status_code == 200

    usage = api.get(f"/organizations/{org.id}/usage").json()
    assert usage["api_calls"]["current"] == 4  # this request too
    assert not UsageCounter.objects.filter(org=org).exists()

    counts.flush()

    assert UsageCounter.objects.get(org=org, counter="api_calls").value == 4
    history = api.get(f"/organizations/{org.id}/usage/history?days=2").json()
    assert history["counters"]["api_calls"] == [0, 5]  # live, this request too
    counts.flush()  # again: nothing doubles
    assert UsageCounter.objects.get(org=org, counter="api_calls").value == 5
    history = api.get(f"/organizations/{org.id}/usage/history?days=2").json()
    assert history["counters"]["api_calls"] == [0, 6]


def test_quota_headers_come_from_the_live_count(billing, counts, api, org):
    set_plan_limit("free", "api_calls", 10, "hard")
    call(org.pk)

    response = api.get(f"/organizations/{org.id}")

    assert response["AgentPost-Quota-Remaining"] == "8"


def test_a_hard_limit_refuses_with_the_error_shape(billing, counts, api, org):
    set_plan_limit("free", "api_calls", 2, "hard")
    assert api.get(f"/organizations/{org.id}").status_code == 200
    assert api.get(f"/organizations/{org.id}").status_code == 200

    response = api.get(f"/organizations/{org.id}")

    assert response.status_code == 429
    error = response.json()["error"]
    assert error["type"] == "usage_limit_exceeded"
    assert (error["counter"], error["limit"], error["current"]) == ("api_calls", 2, 2)
    assert error["resets_at"] == "2026-04-01T00:00:00+00:00"
    assert response["Retry-After"] == str(12 * 3600 + 21 * 24 * 3600)


def test_a_lower_override_bites_on_the_next_call(
    billing, counts, api, org, django_capture_on_commit_callbacks
):
    for _ in range(3):
        call(org.pk)

    with django_capture_on_commit_callbacks(execute=True):
        response = api.patch(
            f"/organizations/{org.id}/settings",
            {"limits": {"api_calls": {"limit": 4, "mode": "hard"}}},
        )
    assert response.status_code == 200

    assert api.get(f"/organizations/{org.id}").status_code == 429


def test_a_plan_limit_edited_by_staff_applies_at_once(
    billing, counts, org, django_capture_on_commit_callbacks
):
    from usage.models import PlanLimit

    call(org.pk)
    row = PlanLimit.objects.get(plan_id="free", counter="api_calls")
    row.limit, row.mode = 1, "hard"
    with django_capture_on_commit_callbacks(execute=True):
        row.save()

    with pytest.raises(QuotaExceeded):
        call(org.pk)


def test_a_new_period_starts_at_zero_and_keeps_the_old_one(billing, counts, org):
    set_plan_limit("free", "api_calls", 3, "hard")
    for _ in range(3):
        call(org.pk)
    with pytest.raises(QuotaExceeded):
        call(org.pk)

    april = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)
    with time_machine.travel(april, tick=False):
        charge = call(org.pk, now=april)

    assert charge.current == 1
    assert charge.resets_at == datetime(2026, 5, 1, tzinfo=UTC)
    counts.flush()
    march = UsageCounter.objects.get(org=org, period_start=MARCH)
    assert march.value == 3


def test_when_redis_loses_its_data_counting_resumes_from_the_database(
    billing, counts, org
):
    for _ in range(4):
        call(org.pk)
    counts.flush()
    for key in counts.client.scan_iter(f"{counts.prefix}*"):
        counts.client.delete(key)

    assert call(org.pk).current == 5
    counts.flush()
    assert database_value(UsageCounter, org) == 5
    assert database_value(UsageDaily, org) == 5


def unreachable(*args, **kwargs):
    raise redis.ConnectionError("connection refused")


@pytest.mark.parametrize("flushed_before", [False, True])
def test_while_redis_is_away_calls_are_counted_in_the_database(
    billing,
    counts,
    org,
    monkeypatch,
    django_capture_on_commit_callbacks,
    flushed_before,
):
    set_plan_limit("free", "api_calls", 100, "soft")
    for _ in range(3):
        call(org.pk)
    if flushed_before:
        counts.flush()  # nothing dirty is left for Redis to flush later

    with monkeypatch.context() as patch:
        patch.setattr(counts, "_send_once", unreachable)
        with django_capture_on_commit_callbacks(execute=True):
            assert call(org.pk).current == 1 + 3 * flushed_before
            assert call(org.pk).current == 2 + 3 * flushed_before
    assert counts.known_down()
    counts._down_until = 0  # Redis is back
    counts.flush()  # beat's, within USAGE_FLUSH_SECONDS

    assert call(org.pk).current == 6
    counts.flush()
    assert database_value(UsageCounter, org) == 6


def test_while_redis_is_away_a_hard_limit_turns_calls_away(
    billing, counts, api, org, monkeypatch
):
    set_plan_limit("free", "api_calls", 5, "hard")
    call(org.pk)

    with monkeypatch.context() as patch:
        patch.setattr(counts, "_send_once", unreachable)
        response = api.get(f"/organizations/{org.id}")
        usage = api.get(f"/organizations/{org.id}/usage")  # never refused
    counts._down_until = 0

    assert response.status_code == 503
    assert response.json()["error"]["type"] == "usage_unavailable"
    assert usage.status_code == 200
    counts.flush()
    assert call(org.pk).current == 3  # the first call, /usage, this one


def test_calls_counted_in_the_database_reach_redis_at_the_flush_if_not_before(
    billing, counts, org, monkeypatch, django_capture_on_commit_callbacks
):
    set_plan_limit("free", "api_calls", 100, "soft")
    for _ in range(2):
        call(org.pk)
    counts.flush()

    with monkeypatch.context() as patch:
        patch.setattr(counts, "_send_once", unreachable)
        with django_capture_on_commit_callbacks(execute=True):
            call(org.pk)
            call(org.pk)
    counts._down_until = 0
    assert LiveOutbox.objects.filter(kind="base").count() == 2

    counts.flush()

    assert not LiveOutbox.objects.exists()
    assert call(org.pk).current == 5


def lose_next_reply(monkeypatch, counts) -> None:
    """The next script runs in Redis, but its reply never arrives."""
    connection_class = counts.client.connection_pool.connection_class
    read = connection_class.read_response
    lost = []

    def read_then_time_out(self, *args, **kwargs):
        reply = read(self, *args, **kwargs)
        if lost or not isinstance(reply, list):  # a script's reply is a list
            return reply
        lost.append(reply)
        raise redis.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(connection_class, "read_response", read_then_time_out)


def test_a_reply_lost_after_the_script_ran_is_not_counted_twice(
    billing, counts, org, monkeypatch
):
    call(org.pk)

    with monkeypatch.context() as patch:
        lose_next_reply(patch, counts)
        with pytest.raises(UsageUnavailable):  # the client is asked to retry
            call(org.pk)
    with monkeypatch.context() as patch:
        lose_next_reply(patch, counts)
        assert call(org.pk, enforce=False) is None  # let through
    assert not counts.known_down()  # one lost reply is no outage
    counts.flush()

    assert counts.total(org_id=org.pk, counter="api_calls", period_start=MARCH) == 3
    assert database_value(UsageCounter, org) == 3


def test_a_lost_reply_never_lets_a_call_past_a_hard_limit(
    billing, counts, api, org, monkeypatch
):
    set_plan_limit("free", "api_calls", 3, "hard")
    call(org.pk)

    with monkeypatch.context() as patch:
        lose_next_reply(patch, counts)
        response = api.get(f"/organizations/{org.id}")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "usage_unavailable"
    assert response["Retry-After"] == "1"

    assert api.get(f"/organizations/{org.id}").status_code == 200  # the third
    assert api.get(f"/organizations/{org.id}").status_code == 429
    assert database_value(UsageCounter, org) == 0  # nothing in the database


def test_a_server_still_loading_counts_in_the_database(
    billing, counts, org, monkeypatch, django_capture_on_commit_callbacks
):
    set_plan_limit("free", "api_calls", None, "soft")  # see the hard test
    call(org.pk)
    connection_class = counts.client.connection_pool.connection_class

    def loading(self, *args, **kwargs):
        raise redis.BusyLoadingError("Redis is loading the dataset in memory")

    with monkeypatch.context() as patch:
        patch.setattr(connection_class, "send_command", lambda *a, **k: None)
        patch.setattr(connection_class, "read_response", loading)
        with django_capture_on_commit_callbacks(execute=True):
            call(org.pk)
    assert counts.known_down()
    counts._down_until = 0
    counts.flush()

    assert counts.total(org_id=org.pk, counter="api_calls", period_start=MARCH) == 2


def test_while_redis_is_known_down_requests_do_not_wait_for_it(
    billing, counts, org, monkeypatch, django_capture_on_commit_callbacks
):
    set_plan_limit("free", "api_calls", None, "soft")  # see the hard test
    asked = []
    monkeypatch.setattr(counts, "do_outbox", lambda **kwargs: asked.append(kwargs))
    counts._down_until = time.monotonic() + 60

    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(3):
            call(org.pk)

    assert asked == []  # left for the flush
    assert LiveOutbox.objects.filter(kind="base").count() == 3


def test_a_refused_command_is_counted_in_the_database_without_an_outage(
    billing, counts, org, monkeypatch
):
    set_plan_limit("free", "api_calls", None, "soft")  # see the hard test
    call(org.pk)

    def refused(*args, **kwargs):
        raise redis.ResponseError("OOM command not allowed")

    with monkeypatch.context() as patch:
        patch.setattr(counts, "_send_once", refused)
        call(org.pk)

    assert counts._down_until == 0
    counts.flush()
    assert counts.total(org_id=org.pk, counter="api_calls", period_start=MARCH) == 2
    assert database_value(UsageCounter, org) == 2


@pytest.mark.parametrize("amount", [2**53 + 1, 10**17])
def test_huge_amounts_are_counted_exactly(
    billing, counts, org, amount, django_capture_on_commit_callbacks
):
    set_plan_limit("free", "api_calls", None, "soft")
    call(org.pk)

    with django_capture_on_commit_callbacks(execute=True):
        call(org.pk, amount=amount)

    assert counts._down_until == 0
    assert counts.total(org_id=org.pk, counter="api_calls", period_start=MARCH) == (
        amount + 1
    )
    counts.flush()
    assert database_value(UsageCounter, org) == amount + 1


def test_a_limit_change_while_redis_blinked_applies_by_the_next_flush(
    billing, counts, api, org, monkeypatch, django_capture_on_commit_callbacks
):
    for _ in range(3):
        call(org.pk)

    with monkeypatch.context() as patch:
        patch.setattr(counts.admin, "incr", unreachable)
        with django_capture_on_commit_callbacks(execute=True):
            response = api.patch(
                f"/organizations/{org.id}/settings",
                {"limits": {"api_calls": {"limit": 4, "mode": "hard"}}},
            )
    assert response.status_code == 200
    counts.flush()

    assert api.get(f"/organizations/{org.id}").status_code == 429


def test_limits_that_keep_changing_while_loading_count_in_the_database(
    billing, counts, org, monkeypatch
):
    set_plan_limit("free", "api_calls", None, "soft")  # see the hard test
    load = counts.load_config

    def load_while_a_plan_is_saved(**kwargs):
        load(**kwargs)
        counts.forget_limits(None)

    monkeypatch.setattr(counts, "load_config", load_while_a_plan_is_saved)

    assert call(org.pk).current == 1
    assert database_value(UsageCounter, org) == 1


def test_the_alert_check_goes_on_while_redis_is_unreachable(
    billing, counts, org, monkeypatch
):
    from agentpost.events.models import Event
    from usage.alerts import check_usage_alerts

    set_plan_limit("free", "messages_sent", 100, "soft")
    metering.charge(org_id=org.pk, counter="messages_sent", now=CURRENT_TIME, amount=50)
    set_plan_limit("free", "messages_sent", 10, "soft")  # crossed by the change
    monkeypatch.setattr(counts.admin, "hscan", unreachable)
    monkeypatch.setattr(counts.client, "get", unreachable)

    check_usage_alerts(now=CURRENT_TIME)

    assert Event.objects.filter(org=org, type="usage.exceeded").exists()


def test_billing_turned_off_is_not_served_the_paid_limits(
    billing, counts, org, settings
):
    set_plan_limit("free", "api_calls", 1, "hard")
    call(org.pk)
    settings.BILLING_ENABLED = False  # every org on the self-hosted plan

    assert call(org.pk).limit is None


def test_a_call_counted_during_a_flush_is_flushed_by_the_next(
    billing, counts, org, monkeypatch
):
    call(org.pk)
    write = live._write_greatest

    def write_while_another_call_lands(model, field, values):
        if model is UsageCounter:
            call(org.pk)
        write(model, field, values)

    monkeypatch.setattr(live, "_write_greatest", write_while_another_call_lands)
    counts.flush()
    monkeypatch.setattr(live, "_write_greatest", write)
    assert UsageCounter.objects.get(org=org).value == 1

    counts.flush()

    assert UsageCounter.objects.get(org=org).value == 2


def test_alerts_fire_once_inline_and_not_again_from_the_check(billing, counts, org):
    from agentpost.events.models import Event
    from usage.alerts import check_usage_alerts

    set_plan_limit("free", "api_calls", 10, "soft")
    for _ in range(12):
        call(org.pk)
    for _ in range(3):
        check_usage_alerts(now=CURRENT_TIME)

    warning = Event.objects.get(org=org, type="usage.warning")
    assert warning.data["current"] == 8
    exceeded = Event.objects.get(org=org, type="usage.exceeded")
    assert exceeded.data["current"] == 10


@postgres_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_n_clients_times_m_calls_count_exactly(billing, counts, org, mode):
    set_plan_limit("free", "api_calls", 10**9, mode)
    clients, calls = 8, 50

    run_together(clients, lambda i: [call(org.pk) for _ in range(calls)])
    counts.flush()

    assert counts.total(org_id=org.pk, counter="api_calls", period_start=MARCH) == 400
    assert database_value(UsageCounter, org) == 400
    assert database_value(UsageDaily, org) == 400


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_hard_limit_lets_exactly_the_limit_through_concurrently(billing, counts, org):
    limit = 37
    set_plan_limit("free", "api_calls", limit, "hard")

    def work(i: int) -> int:
        passed = 0
        for _ in range(10):
            try:
                call(org.pk)
                passed += 1
            except QuotaExceeded as exc:
                assert exc.current == limit
        return passed

    assert sum(run_together(12, work)) == limit
    counts.flush()
    assert database_value(UsageCounter, org) == limit


def _count_then_die(org_id: str, calls: int, ready) -> None:
    for _ in range(calls):
        call(org_id)
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)  # no flush, no clean exit


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_what_a_killed_process_counted_survives_it(billing, counts, org):
    connections.close_all()  # the child must not share the parent's connection
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=_count_then_die, args=(org.pk, 25, ready))
    child.start()
    child.join(timeout=60)

    assert ready.is_set()
    assert child.exitcode == -signal.SIGKILL
    counts.flush()
    assert database_value(UsageCounter, org) == 25


def test_calls_counted_in_the_database_while_redis_was_away_bind_at_once(
    billing, counts, org, django_capture_on_commit_callbacks
):
    set_plan_limit("free", "api_calls", 5, "hard")
    for _ in range(4):
        call(org.pk)
    counts._down_until = time.monotonic() + 60
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(3):
            call(org.pk, enforce=False)  # as GET /usage, never refused
    counts._down_until = time.monotonic() - 1  # Redis answers again

    with pytest.raises(QuotaExceeded) as refused:
        call(org.pk)
    assert refused.value.current == 7


def test_back_from_an_outage_a_process_does_a_bounded_part_of_the_outbox(
    billing, counts, org, monkeypatch, django_capture_on_commit_callbacks
):
    set_plan_limit("free", "api_calls", None, "soft")
    call(org.pk)
    LiveOutbox.objects.all().delete()
    counts._down_until = time.monotonic() + 60
    for _ in range(5):
        call(org.pk)  # counted in the database, one outbox row each
    monkeypatch.setattr(live, "OUTBOX_BATCH", 2)
    monkeypatch.setattr(live, "OUTBOX_BATCHES_ON_RETURN", 2)
    counts._down_until = time.monotonic() - 1

    # Each base read takes all the database holds: 1 + 5 + this call.
    assert call(org.pk).current == 7
    assert LiveOutbox.objects.count() == 1
    counts.flush()
    assert not LiveOutbox.objects.exists()
    assert call(org.pk).current == 8

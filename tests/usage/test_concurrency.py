"""
Counting under real concurrency: threads with their own database connections.

These need PostgreSQL (CI runs it); SQLite serialises every writer, so there is
nothing concurrent to prove there.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from agentpost import metering
from agentpost.metering import QuotaExceeded
from tests.conftest import CURRENT_TIME
from tests.usage.conftest import postgres_only, set_plan_limit
from usage import counting
from usage.periods import month_period

pytestmark = [postgres_only, pytest.mark.django_db(transaction=True)]


def run_together(clients: int, work) -> list:
    """Run ``work(i)`` in ``clients`` threads released at once; return results."""
    barrier = threading.Barrier(clients)
    results: list = [None] * clients
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


def period_total(org, counter: str) -> int:
    return counting.total(
        org_id=org.pk,
        counter=counter,
        period_start=month_period(CURRENT_TIME).start,
    )


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_n_clients_times_m_increments_count_exactly(billing, org, mode):
    # A limit far away, so that nothing is refused and the path is the one named.
    set_plan_limit("free", "api_calls", 10**9, mode)
    clients, increments = 8, 50

    def work(i: int) -> None:
        for _ in range(increments):
            metering.charge(org_id=org.pk, counter="api_calls", now=CURRENT_TIME)

    run_together(clients, work)

    assert period_total(org, "api_calls") == clients * increments


def test_a_hard_limit_lets_exactly_the_limit_through(billing, org):
    limit = 37
    set_plan_limit("free", "messages_sent", limit, "hard")
    clients, attempts = 12, 10  # 120 tries at 37 places

    def work(i: int) -> tuple[int, int]:
        passed = refused = 0
        for _ in range(attempts):
            try:
                metering.charge(
                    org_id=org.pk, counter="messages_sent", now=CURRENT_TIME
                )
                passed += 1
            except QuotaExceeded as exc:
                assert exc.limit == limit
                assert exc.current == limit
                refused += 1
        return passed, refused

    results = run_together(clients, work)

    assert sum(p for p, _ in results) == limit
    assert sum(r for _, r in results) == clients * attempts - limit
    assert period_total(org, "messages_sent") == limit


def test_concurrent_sends_through_the_api_stop_at_the_limit(billing, new_org, inbox):
    from tests.conftest import ApiClient

    limit = 5
    set_plan_limit("free", "messages_sent", limit, "hard")

    def work(i: int) -> list[int]:
        api = ApiClient(new_org.api_key.token)
        return [
            api.post(
                f"/inboxes/{inbox.id}/messages",
                {"to": ["a@example.com"], "text": f"hello {i}"},
            ).status_code
            for _ in range(3)
        ]

    statuses = [s for r in run_together(6, work) for s in r]

    assert statuses.count(202) == limit
    assert statuses.count(429) == 18 - limit
    assert new_org.org.messages.count() == limit


def test_concurrent_checks_fire_an_alert_once(billing, org):
    from agentpost.events.models import Event
    from usage.alerts import check_usage_alerts
    from usage.models import UsageCounter

    set_plan_limit("free", "api_calls", 10, "hard")
    UsageCounter.objects.create(
        org=org,
        counter="api_calls",
        period_start=month_period(CURRENT_TIME).start,
        shard=5,
        value=10,
    )

    run_together(6, lambda i: check_usage_alerts(now=CURRENT_TIME))

    assert Event.objects.filter(org=org, type="usage.warning").count() == 1
    assert Event.objects.filter(org=org, type="usage.exceeded").count() == 1


def test_concurrent_inbound_mail_holds_exactly_what_is_past_the_limit(
    billing, org, inbox
):
    from agentpost.mail.inbound import store_inbound_mail

    set_plan_limit("free", "messages_received", 7, "hard")
    raw = f"From: a@example.com\r\nTo: {inbox.address}\r\nSubject: hi\r\n\r\nx\r\n"

    def work(i: int) -> list[str]:
        return [
            store_inbound_mail(inbox=inbox, raw=raw.encode(), now=CURRENT_TIME).status
            for _ in range(3)
        ]

    statuses = [s for r in run_together(6, work) for s in r]

    assert statuses.count("received") == 7
    assert statuses.count("held") == 11
    assert org.messages.count() == 18

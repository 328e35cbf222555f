from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from agentpost import metering

TODAY = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)


def charge(org, counter: str, amount: int, days_ago: int) -> None:
    metering.charge(
        org_id=org.pk,
        counter=counter,
        amount=amount,
        now=TODAY - timedelta(days=days_ago),
        enforce=False,
    )


def history(api, org, query: str = ""):
    with time_machine.travel(TODAY, tick=False):
        return api.get(f"/organizations/{org.id}/usage/history{query}")


def test_it_gives_a_daily_series_per_counter(api, org):
    charge(org, "messages_sent", 1, days_ago=2)
    charge(org, "messages_sent", 1, days_ago=2)
    charge(org, "messages_sent", 1, days_ago=0)
    # Across a month boundary: history is by day, whatever the period.
    charge(org, "messages_sent", 5, days_ago=12)

    body = history(api, org, "?days=14").json()

    assert body["days"][0] == "2026-02-25"
    assert body["days"][-1] == "2026-03-10"
    sent = dict(zip(body["days"], body["counters"]["messages_sent"], strict=True))
    assert sent["2026-02-26"] == 5
    assert sent["2026-03-08"] == 2
    assert sent["2026-03-10"] == 1
    assert sum(sent.values()) == 8
    # This request is an API call of today.
    assert body["counters"]["api_calls"][-1] == 1


def test_storage_history_is_the_level_at_the_end_of_each_day(api, org):
    charge(org, "storage_bytes", 1000, days_ago=3)
    charge(org, "storage_bytes", 500, days_ago=1)
    metering.credit(
        org_id=org.pk,
        counter="storage_bytes",
        amount=300,
        now=TODAY - timedelta(hours=1),
    )

    body = history(api, org, "?days=5").json()

    assert body["counters"]["storage_bytes"] == [0, 1000, 1000, 1500, 1200]


def test_it_defaults_to_30_days(api, org):
    body = history(api, org).json()

    assert len(body["days"]) == 30
    assert all(len(series) == 30 for series in body["counters"].values())


@pytest.mark.parametrize("days", ["0", "366", "-1", "ten", "1.5"])
def test_days_out_of_range_is_400(api, org, days):
    response = history(api, org, f"?days={days}")

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request"


def test_a_year_is_allowed(api, org):
    assert len(history(api, org, "?days=365").json()["days"]) == 365


def test_another_orgs_history_is_404(api, other):
    assert history(api, other.org).status_code == 404

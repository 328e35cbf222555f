from datetime import UTC, datetime

import pytest
import time_machine

from agentpost import metering
from agentpost.metering import QuotaExceeded
from tests.usage.conftest import set_plan_limit

MARCH_END = datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC)
APRIL_START = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)


def usage_of(api, org) -> dict:
    return api.get(f"/organizations/{org.id}/usage").json()


def test_a_free_org_starts_at_zero_on_the_first_of_the_month(billing, api, org, inbox):
    set_plan_limit("free", "messages_sent", 2, "hard")
    with time_machine.travel(MARCH_END, tick=False):
        for _ in range(2):
            api.post(f"/inboxes/{inbox.id}/messages", {"to": ["a@x.test"], "text": "x"})
        refused = api.post(
            f"/inboxes/{inbox.id}/messages", {"to": ["a@x.test"], "text": "x"}
        )
        assert refused.status_code == 429
        assert refused.json()["error"]["resets_at"] == "2026-04-01T00:00:00+00:00"

    with time_machine.travel(APRIL_START, tick=False):
        usage = usage_of(api, org)
        sent = api.post(
            f"/inboxes/{inbox.id}/messages", {"to": ["a@x.test"], "text": "x"}
        )

    assert usage["messages_sent"]["current"] == 0
    assert usage["period"] == {
        "start": "2026-04-01T00:00:00+00:00",
        "end": "2026-05-01T00:00:00+00:00",
    }
    assert sent.status_code == 202


def test_a_paid_org_counts_in_its_subscription_period(billing, api, org):
    org.plan = "starter"
    org.current_period_start = datetime(2026, 3, 15, 10, 0, tzinfo=UTC)
    org.current_period_end = datetime(2026, 4, 15, 10, 0, tzinfo=UTC)
    org.save()
    set_plan_limit("starter", "api_calls", 3, "hard")

    with time_machine.travel(datetime(2026, 4, 2, tzinfo=UTC), tick=False):
        for _ in range(3):
            api.get(f"/organizations/{org.id}")
        refused = api.get(f"/organizations/{org.id}")
    # The calendar month turned, the subscription period did not.
    assert refused.status_code == 429
    assert refused.json()["error"]["resets_at"] == "2026-04-15T10:00:00+00:00"

    with time_machine.travel(datetime(2026, 4, 15, 10, 0, tzinfo=UTC), tick=False):
        # Billing would move the period; until it does, the calendar month counts.
        org.current_period_start = datetime(2026, 4, 15, 10, 0, tzinfo=UTC)
        org.current_period_end = datetime(2026, 5, 15, 10, 0, tzinfo=UTC)
        org.save()
        usage = usage_of(api, org)

    assert usage["api_calls"]["current"] == 1
    assert usage["period"]["start"] == "2026-04-15T10:00:00+00:00"


def test_storage_is_a_level_that_does_not_reset(billing, org):
    set_plan_limit("free", "storage_bytes", 100, "hard")
    metering.charge(org_id=org.pk, counter="storage_bytes", amount=100, now=MARCH_END)

    with pytest.raises(QuotaExceeded):
        metering.charge(
            org_id=org.pk, counter="storage_bytes", amount=1, now=APRIL_START
        )

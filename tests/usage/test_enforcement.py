import base64

import pytest

from agentpost import metering
from agentpost.mail.models import Message
from agentpost.metering import QuotaExceeded
from tests.conftest import CURRENT_TIME
from tests.usage.conftest import set_plan_limit


def send(api, inbox, content: bytes = b""):
    body = {"to": ["a@example.com"], "text": "hi"}
    if content:
        body["attachments"] = [
            {"filename": "a.bin", "content": base64.b64encode(content).decode()}
        ]
    return api.post(f"/inboxes/{inbox.id}/messages", body)


def test_a_hard_api_calls_limit_answers_429_naming_the_counter(billing, api, org):
    set_plan_limit("free", "api_calls", 2, "hard")
    assert api.get(f"/organizations/{org.id}").status_code == 200
    assert api.get(f"/organizations/{org.id}").status_code == 200

    response = api.get(f"/organizations/{org.id}")

    assert response.status_code == 429
    error = response.json()["error"]
    assert error["type"] == "usage_limit_exceeded"
    assert error["counter"] == "api_calls"
    assert error["limit"] == 2
    assert error["current"] == 2
    assert error["resets_at"].startswith("20")
    assert response["AgentPost-Quota-Remaining"] == "0"
    assert 0 < int(response["Retry-After"]) <= 31 * 24 * 3600


def test_quota_headers_on_a_normal_response(billing, api, org):
    set_plan_limit("free", "api_calls", 10, "hard")

    response = api.get(f"/organizations/{org.id}")

    assert response["AgentPost-Quota-Counter"] == "api_calls"
    assert response["AgentPost-Quota-Limit"] == "10"
    assert response["AgentPost-Quota-Remaining"] == "9"
    assert response["AgentPost-Quota-Reset"].startswith("20")


def test_quota_headers_show_the_counter_nearest_its_limit(billing, api, inbox):
    set_plan_limit("free", "messages_sent", 2, "hard")

    response = send(api, inbox)

    assert response.status_code == 202
    assert response["AgentPost-Quota-Counter"] == "messages_sent"
    assert response["AgentPost-Quota-Remaining"] == "1"


def test_no_quota_headers_without_limits(api, org):
    response = api.get(f"/organizations/{org.id}")

    assert response.status_code == 200
    assert "AgentPost-Quota-Limit" not in response


def test_a_send_past_the_hard_limit_is_refused_and_stores_nothing(
    billing, api, org, inbox
):
    set_plan_limit("free", "messages_sent", 1, "hard")
    assert send(api, inbox).status_code == 202

    response = send(api, inbox)

    assert response.status_code == 429
    assert response.json()["error"]["counter"] == "messages_sent"
    assert Message.objects.filter(org=org).count() == 1


def test_storage_refuses_a_send_that_would_store_more(billing, api, org, inbox):
    set_plan_limit("free", "storage_bytes", 1500, "hard")
    assert send(api, inbox, b"x" * 1000).status_code == 202

    response = send(api, inbox, b"x" * 1000)

    assert response.status_code == 429
    error = response.json()["error"]
    assert (error["counter"], error["current"], error["limit"]) == (
        "storage_bytes",
        1000,
        1500,
    )
    # A level never resets: freeing space is the way back.
    assert error["resets_at"] is None
    # The refused send counted nothing, its message included.
    usage = api.get(f"/organizations/{org.id}/usage").json()
    assert usage["messages_sent"]["current"] == 1
    assert send(api, inbox, b"x" * 500).status_code == 202


def test_a_soft_limit_lets_requests_continue(billing, api, org, inbox):
    org.plan = "starter"
    org.save()
    set_plan_limit("starter", "messages_sent", 1, "soft")

    assert [send(api, inbox).status_code for _ in range(3)] == [202, 202, 202]
    usage = api.get(f"/organizations/{org.id}/usage").json()
    assert usage["messages_sent"]["current"] == 3
    assert usage["messages_sent"]["percentage"] == 300


def test_webhook_deliveries_refused_at_the_limit_until_the_period_resets(billing, org):
    set_plan_limit("free", "webhook_deliveries", 1, "hard")
    metering.charge(org_id=org.pk, counter="webhook_deliveries", now=CURRENT_TIME)

    with pytest.raises(QuotaExceeded) as refused:
        metering.charge(org_id=org.pk, counter="webhook_deliveries", now=CURRENT_TIME)

    assert refused.value.resets_at.isoformat() == "2026-04-01T00:00:00+00:00"


def test_billing_off_never_limits_even_the_free_plan(api, org, inbox):
    set_plan_limit("free", "messages_sent", 1, "hard")

    assert [send(api, inbox).status_code for _ in range(3)] == [202, 202, 202]


def test_a_deleted_attachment_credits_storage(billing, org):
    set_plan_limit("free", "storage_bytes", 100, "hard")
    metering.charge(
        org_id=org.pk, counter="storage_bytes", amount=100, now=CURRENT_TIME
    )
    with pytest.raises(QuotaExceeded):
        metering.charge(
            org_id=org.pk, counter="storage_bytes", amount=1, now=CURRENT_TIME
        )

    metering.credit(org_id=org.pk, counter="storage_bytes", amount=40, now=CURRENT_TIME)

    charge = metering.charge(
        org_id=org.pk, counter="storage_bytes", amount=40, now=CURRENT_TIME
    )
    assert charge.current == 100

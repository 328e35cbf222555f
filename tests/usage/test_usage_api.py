import base64

from tests.usage.conftest import set_plan_limit


def test_usage_counts_what_the_org_did(api, org, inbox):
    content = b"0123456789" * 100
    api.post(
        f"/inboxes/{inbox.id}/messages",
        {
            "to": ["a@example.com"],
            "text": "hi",
            "attachments": [
                {"filename": "a.bin", "content": base64.b64encode(content).decode()}
            ],
        },
    )
    usage = api.get(f"/organizations/{org.id}/usage").json()
    # Billing is off in this test: the self-hosted plan counts but never limits.
    assert usage["messages_sent"] == {
        "current": 1,
        "limit": None,
        "percentage": None,
        "mode": None,
    }
    assert usage["storage_bytes"]["current"] == 1000
    assert usage["messages_received"]["current"] == 0
    # The send and this read are both API calls.
    assert usage["api_calls"]["current"] == 2
    assert usage["period"]["start"].startswith("20")


def test_usage_shows_the_plans_limits_and_percentage(billing, api, org, inbox):
    set_plan_limit("free", "messages_sent", 4, "hard")
    api.post(f"/inboxes/{inbox.id}/messages", {"to": ["a@example.com"], "text": "x"})

    usage = api.get(f"/organizations/{org.id}/usage").json()

    assert usage["messages_sent"] == {
        "current": 1,
        "limit": 4,
        "percentage": 25,
        "mode": "hard",
    }
    assert usage["api_calls"]["limit"] == 100_000


def test_another_orgs_usage_is_404(api, other):
    assert api.get(f"/organizations/{other.org.id}/usage").status_code == 404

import pytest
from django.test import Client

from agentpost.orgs.models import AuditEntry
from tests.usage.conftest import set_plan_limit
from usage.models import LimitOverride


def url(org) -> str:
    return f"/organizations/{org.id}/settings"


def test_it_shows_the_effective_limits_with_plan_and_overrides(billing, api, org):
    body = api.get(url(org)).json()

    assert body["plan"] == "free"
    assert set(body["limits"]) == {
        "messages_sent",
        "messages_received",
        "storage_bytes",
        "api_calls",
        "webhook_deliveries",
    }
    assert body["limits"]["messages_sent"] == {
        "limit": 3000,
        "mode": "hard",
        "warning_threshold": 80,
        "plan": {"limit": 3000, "mode": "hard", "warning_threshold": 80},
        "overrides": {"limit": None, "mode": None, "warning_threshold": None},
    }


def test_billing_off_puts_every_org_on_the_unlimited_selfhosted_plan(api, org):
    body = api.get(url(org)).json()

    assert body["plan"] == "selfhosted"
    assert body["limits"]["api_calls"]["limit"] is None


def test_an_override_is_applied_and_audited(billing, api, org):
    response = api.patch(
        url(org),
        {"limits": {"messages_sent": {"limit": 100, "warning_threshold": 50}}},
    )

    assert response.status_code == 200
    limits = response.json()["limits"]["messages_sent"]
    assert (limits["limit"], limits["mode"], limits["warning_threshold"]) == (
        100,
        "hard",
        50,
    )
    assert limits["overrides"] == {"limit": 100, "mode": None, "warning_threshold": 50}
    entry = AuditEntry.objects.get(org=org, action="usage.limits_changed")
    assert entry.old == {"messages_sent": None}
    assert entry.new == {
        "messages_sent": {"limit": 100, "mode": None, "warning_threshold": 50}
    }
    assert entry.actor_key_id is not None
    assert entry.created_at is not None


def test_null_returns_a_field_to_the_plans_value(billing, api, org):
    api.patch(url(org), {"limits": {"api_calls": {"limit": 10, "mode": "hard"}}})

    body = api.patch(url(org), {"limits": {"api_calls": {"limit": None}}}).json()

    assert body["limits"]["api_calls"]["limit"] == 100_000
    assert body["limits"]["api_calls"]["overrides"]["limit"] is None
    audit = AuditEntry.objects.filter(org=org).order_by("-id").first()
    assert audit.old == {
        "api_calls": {"limit": 10, "mode": "hard", "warning_threshold": None}
    }
    assert audit.new == {
        "api_calls": {"limit": None, "mode": "hard", "warning_threshold": None}
    }


def test_a_null_counter_drops_all_its_overrides(billing, api, org):
    api.patch(url(org), {"limits": {"api_calls": {"limit": 10}}})

    api.patch(url(org), {"limits": {"api_calls": None}})

    assert not LimitOverride.objects.filter(org=org).exists()
    assert api.get(url(org)).json()["limits"]["api_calls"]["limit"] == 100_000


def test_an_override_takes_effect_on_the_next_request(billing, api, org):
    # This PATCH is the third API call of the period.
    api.get(url(org))
    api.get(url(org))
    api.patch(url(org), {"limits": {"api_calls": {"limit": 4}}})

    assert api.get(f"/organizations/{org.id}").status_code == 200  # the 4th
    refused = api.get(f"/organizations/{org.id}")

    assert refused.status_code == 429
    assert refused.json()["error"]["counter"] == "api_calls"
    assert refused.json()["error"]["limit"] == 4


def test_an_org_cannot_raise_its_limit_above_its_plan(billing, api, org):
    response = api.patch(url(org), {"limits": {"messages_sent": {"limit": 3001}}})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert "limits.messages_sent.limit" in error["fields"]
    assert not LimitOverride.objects.exists()
    assert not AuditEntry.objects.filter(action="usage.limits_changed").exists()


def test_an_org_cannot_soften_a_hard_plan_limit(billing, api, org):
    response = api.patch(url(org), {"limits": {"messages_sent": {"mode": "soft"}}})

    assert response.status_code == 400
    assert "limits.messages_sent.mode" in response.json()["error"]["fields"]


def test_a_paid_org_may_make_its_soft_limit_hard(billing, api, org):
    org.plan = "starter"
    org.save()

    response = api.patch(url(org), {"limits": {"messages_sent": {"mode": "hard"}}})

    assert response.status_code == 200
    assert response.json()["limits"]["messages_sent"]["mode"] == "hard"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "limits"),
        ({"limits": {}}, "limits"),
        ({"limits": {"messages_sent": {}}}, "limits.messages_sent"),
        ({"limits": {"bananas": {"limit": 1}}}, "limits.bananas"),
        ({"limits": {"api_calls": {"limit": -1}}}, "limits.api_calls.limit"),
        ({"limits": {"api_calls": {"limit": "10"}}}, "limits.api_calls.limit"),
        ({"limits": {"api_calls": {"limit": 1.5}}}, "limits.api_calls.limit"),
        ({"limits": {"api_calls": {"limit": True}}}, "limits.api_calls.limit"),
        ({"limits": {"api_calls": {"mode": "strict"}}}, "limits.api_calls.mode"),
        (
            {"limits": {"api_calls": {"warning_threshold": 0}}},
            "limits.api_calls.warning_threshold",
        ),
        (
            {"limits": {"api_calls": {"warning_threshold": 101}}},
            "limits.api_calls.warning_threshold",
        ),
        ({"limits": {"api_calls": {"max": 1}}}, "limits.api_calls.max"),
        ({"limits": [], "extra": 1}, "extra"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(billing, api, org, body, field):
    response = api.patch(url(org), body)

    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert field in error["fields"], error["fields"]
    assert not LimitOverride.objects.exists()


def test_another_orgs_settings_are_404(billing, api, other):
    assert api.get(url(other.org)).status_code == 404
    response = api.patch(url(other.org), {"limits": {"api_calls": {"limit": 1}}})
    assert response.status_code == 404
    assert not LimitOverride.objects.exists()


def test_staff_override_in_the_admin_is_audited_and_may_exceed_the_plan(
    billing, org, django_user_model
):
    set_plan_limit("free", "messages_sent", 10, "hard")
    staff = django_user_model.objects.create_superuser(
        username="staff", email="staff@agentpost.test", password="pw-staff-1"
    )
    client = Client()
    client.force_login(staff)

    response = client.post(
        "/admin/usage/limitoverride/add/",
        {
            "org": org.pk,
            "counter": "messages_sent",
            "limit": "5000",
            "mode": "soft",
            "warning_threshold": "",
        },
    )

    assert response.status_code == 302
    override = LimitOverride.objects.get(org=org, counter="messages_sent")
    assert (override.limit, override.mode) == (5000, "soft")
    entry = AuditEntry.objects.get(org=org, action="usage.limits_changed")
    assert entry.actor_user == staff
    assert entry.new["messages_sent"]["limit"] == 5000
    listing = client.get("/admin/usage/limitoverride/")
    assert org.name in listing.content.decode()


def test_an_org_locked_out_by_its_own_cap_can_still_lift_it(billing, api, org):
    api.patch(url(org), {"limits": {"api_calls": {"limit": 1}}})
    assert api.get(f"/organizations/{org.id}").status_code == 429
    assert api.get(f"/organizations/{org.id}/usage").status_code == 200

    response = api.patch(url(org), {"limits": {"api_calls": {"limit": None}}})

    assert response.status_code == 200
    assert api.get(f"/organizations/{org.id}").status_code == 200


def test_an_org_cannot_loosen_or_remove_a_staff_override(api, org, billing):
    from django.utils import timezone

    from usage import services

    services.update_limit_overrides(
        org=org,
        changes={"messages_sent": {"limit": 10, "mode": "hard"}},
        now=timezone.now(),
        by_staff=True,
    )
    url = f"/organizations/{org.id}/settings"
    for change in (None, {"limit": None}, {"limit": 11}, {"mode": "soft"}):
        response = api.patch(url, {"limits": {"messages_sent": change}})
        assert response.status_code == 400, change
    assert api.get(url).json()["limits"]["messages_sent"]["limit"] == 10
    # Tightening is still the org's to do.
    response = api.patch(url, {"limits": {"messages_sent": {"limit": 5}}})
    assert response.status_code == 200
    assert response.json()["limits"]["messages_sent"]["limit"] == 5
    assert api.patch(url, {"limits": {"messages_sent": None}}).status_code == 400

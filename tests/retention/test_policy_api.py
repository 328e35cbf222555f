import pytest

from agentpost.orgs.models import AuditEntry, Organization
from retention.models import RetentionPolicy
from retention.services import send_warnings
from tests.retention.conftest import DAY, NOW, outbound


def policy_url(org) -> str:
    return f"/organizations/{org.id}/retention-policy"


def test_it_keeps_everything_until_a_policy_is_set(api, org, clock):
    body = api.get(policy_url(org)).json()
    assert body["retention_days"] is None
    assert body["next_deletion"] is None
    assert body["max_retention_days"] == 3650
    assert body["notice_days"] == 7


def test_it_sets_a_policy_and_audits_who_changed_it(api, org, new_org, clock):
    response = api.put(policy_url(org), {"retention_days": 90})
    assert response.status_code == 200
    assert response.json()["retention_days"] == 90
    assert api.get(policy_url(org)).json()["retention_days"] == 90

    assert api.put(policy_url(org), {"retention_days": None}).status_code == 200
    entries = AuditEntry.objects.filter(org=org, action="retention_policy.changed")
    assert [(e.old, e.new) for e in entries.order_by("pk")] == [
        ({"retention_days": None}, {"retention_days": 90}),
        ({"retention_days": 90}, {"retention_days": None}),
    ]
    assert {e.actor_key_id for e in entries} == {new_org.api_key.key.id}
    assert {e.created_at for e in entries} == {NOW}


def test_setting_the_same_policy_again_is_not_a_change(api, org, clock):
    api.put(policy_url(org), {"retention_days": 30})
    api.put(policy_url(org), {"retention_days": 30})
    assert AuditEntry.objects.filter(org=org).count() == 1


@pytest.mark.parametrize(
    "body",
    [
        {"retention_days": 0},
        {"retention_days": -5},
        {"retention_days": "90"},
        {"retention_days": 90.5},
        {"retention_days": True},
        {"retention_days": 3651},
        {"retention_days": 30, "delete_now": True},
        {},
        [30],
    ],
)
def test_bad_input_is_refused_and_changes_nothing(api, org, body, clock):
    api.put(policy_url(org), {"retention_days": 30})
    audit_rows = AuditEntry.objects.count()

    response = api.put(policy_url(org), body)

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request"
    assert RetentionPolicy.objects.get(org=org).retention_days == 30
    assert AuditEntry.objects.count() == audit_rows


def test_the_maximum_follows_the_setting(api, org, settings, clock):
    settings.RETENTION_MAX_DAYS = 400
    assert api.put(policy_url(org), {"retention_days": 401}).status_code == 400
    assert api.put(policy_url(org), {"retention_days": 400}).status_code == 200


def test_another_orgs_policy_is_404(api, other, clock):
    url = policy_url(other.org)
    assert api.get(url).status_code == 404
    assert api.put(url, {"retention_days": 1}).status_code == 404
    assert not RetentionPolicy.objects.filter(org=other.org).exists()
    assert not AuditEntry.objects.filter(org=other.org).exists()


def test_a_suspended_org_can_read_and_change_its_policy(api, org, clock):
    Organization.objects.filter(pk=org.pk).update(billing_state="suspended")
    assert api.get(policy_url(org)).status_code == 200
    assert api.put(policy_url(org), {"retention_days": None}).status_code == 200
    assert api.put(policy_url(org), {"retention_days": 10}).status_code == 200


def test_the_preview_says_when_deletion_may_begin_and_how_much(api, org, inbox, clock):
    outbound(org, inbox, created_at=NOW - 40 * DAY, files={"a.pdf": b"x" * 300})
    outbound(org, inbox, created_at=NOW - 35 * DAY)
    outbound(org, inbox, created_at=NOW - 10 * DAY, files={"b.pdf": b"y" * 50})

    body = api.put(policy_url(org), {"retention_days": 30}).json()

    # No warning has gone out yet: one sent now would allow deletion in 7 days
    # of everything older than 30 days by then.
    preview = body["next_deletion"]
    assert preview["earliest_at"] == (NOW + 7 * DAY).isoformat().replace("+00:00", "Z")
    assert preview["cutoff"] == (NOW - 23 * DAY).isoformat().replace("+00:00", "Z")
    assert (preview["messages"], preview["bytes"]) == (2, 300)


def test_the_preview_follows_a_sent_warning(api, org, inbox, clock, mailoutbox):
    outbound(org, inbox, created_at=NOW - 40 * DAY, files={"a.pdf": b"x" * 300})
    api.put(policy_url(org), {"retention_days": 30})
    send_warnings(now=NOW)
    clock.move_to(NOW + 8 * DAY)
    preview = api.get(policy_url(org)).json()["next_deletion"]
    assert preview["messages"] == 1
    assert preview["earliest_at"] == (NOW + 8 * DAY).isoformat().replace("+00:00", "Z")

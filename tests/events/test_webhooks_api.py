import base64
import json

import pytest
from django.contrib.auth import get_user_model

from agentpost.events import services
from agentpost.events.models import Delivery, WebhookEndpoint
from agentpost.orgs.models import AuditEntry
from tests.conftest import CURRENT_TIME

URL = "https://hooks.example.com/agentpost"


@pytest.fixture(autouse=True)
def public_name(dns):
    # Creation resolves the name; these tests never deliver, so nothing connects.
    dns.names["hooks.example.com"] = ["93.184.216.34"]
    dns.names["other.example.com"] = ["2606:4700::6810:84e5"]


def create(api, **fields):
    return api.post("/webhooks", {"url": URL, **fields})


def snapshot():
    return json.dumps(
        [
            list(WebhookEndpoint.objects.order_by("pk").values()),
            list(Delivery.objects.order_by("pk").values()),
        ],
        default=str,
    )


def test_it_creates_an_endpoint_and_shows_the_secret_once(api, org):
    response = create(api, event_types=["message.received"], description="prod")
    assert response.status_code == 201
    body = response.json()
    assert body["id"].startswith("whk_")
    assert body["url"] == URL
    assert body["event_types"] == ["message.received"]
    assert body["enabled"] is True
    assert body["disabled_reason"] is None
    assert body["description"] == "prod"
    assert body["secret"].startswith("whsec_")
    assert len(base64.b64decode(body["secret"].removeprefix("whsec_"))) == 32

    shown = api.get(f"/webhooks/{body['id']}").json()
    assert "secret" not in shown
    assert shown["url"] == URL
    listed = api.get("/webhooks").json()
    assert [w["id"] for w in listed["data"]] == [body["id"]]
    assert "secret" not in listed["data"][0]

    audit = AuditEntry.objects.get(org=org, action="webhook.created")
    assert body["secret"] not in json.dumps(audit.new)


def test_every_event_type_is_the_default(api):
    assert create(api).json()["event_types"] == ["*"]
    both = create(api, event_types=["message.sent", "*"]).json()
    assert both["event_types"] == ["*"]


def test_the_list_is_cursor_paginated(api):
    ids = [create(api).json()["id"] for _ in range(3)]
    first = api.get("/webhooks", {"limit": 2}).json()
    assert [w["id"] for w in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    second = api.get("/webhooks", {"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [w["id"] for w in second["data"]] == [ids[0]]
    assert second["has_more"] is False


def test_it_updates_an_endpoint(api, org):
    hook = create(api).json()
    response = api.patch(
        f"/webhooks/{hook['id']}",
        {
            "url": "https://other.example.com/in",
            "event_types": ["usage.warning", "usage.exceeded"],
            "enabled": False,
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["url"] == "https://other.example.com/in"
    assert body["event_types"] == ["usage.exceeded", "usage.warning"]
    assert body["enabled"] is False
    assert body["disabled_reason"] == "by_user"
    assert body["description"] == ""
    assert api.get(f"/webhooks/{hook['id']}").json() == body


def test_it_deletes_an_endpoint_and_its_deliveries(api, org):
    hook = create(api).json()
    services.emit_event(org=org, type="message.sent", data={}, now=CURRENT_TIME)
    assert Delivery.objects.count() == 1

    assert api.delete(f"/webhooks/{hook['id']}").status_code == 204
    assert api.get(f"/webhooks/{hook['id']}").status_code == 404
    assert not Delivery.objects.exists()
    assert AuditEntry.objects.filter(action="webhook.deleted").count() == 1


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "url"),
        ({"url": ""}, "url"),
        ({"url": 42}, "url"),
        ({"url": "ftp://hooks.example.com/"}, "url"),
        ({"url": "https://me:pw@hooks.example.com/"}, "url"),
        ({"url": "https://nowhere.example.com/"}, "url"),
        ({"url": "https://127.0.0.1/"}, "url"),
        ({"url": "http://[::ffff:a9fe:a9fe]/"}, "url"),
        ({"url": URL, "event_types": ["message.recieved"]}, "event_types[0]"),
        ({"url": URL, "event_types": []}, "event_types"),
        ({"url": URL, "event_types": "message.sent"}, "event_types"),
        ({"url": URL, "description": "x" * 501}, "description"),
        ({"url": URL, "enabled": "maybe"}, "enabled"),
        ({"url": URL, "secret": "whsec_mine"}, "secret"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(api, body, field):
    create(api)
    before = snapshot()
    response = api.post("/webhooks", body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request"
    assert field in response.json()["error"]["fields"]
    assert snapshot() == before


def test_a_body_that_is_not_json_is_refused(api):
    response = api.post("/webhooks", "{not json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_json"
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {"url": "http://169.254.169.254/latest/meta-data/"},
        {"url": "gopher://hooks.example.com/"},
        {"event_types": ["nope"]},
        {"enabled": None},
        {"colour": "blue"},
    ],
)
def test_a_bad_update_changes_nothing(api, body):
    hook = create(api).json()
    before = snapshot()
    response = api.patch(f"/webhooks/{hook['id']}", body)
    assert response.status_code == 400
    assert snapshot() == before


def test_rotation_with_a_bad_grace_period_keeps_the_secret(api):
    hook = create(api).json()
    before = snapshot()
    response = api.post(
        f"/webhooks/{hook['id']}/rotate-secret", {"grace_period_seconds": 10**9}
    )
    assert response.status_code == 400
    assert snapshot() == before
    endpoint = WebhookEndpoint.objects.get()
    assert services.signing_secrets(endpoint, CURRENT_TIME) == [hook["secret"]]


def test_rotation_defaults_to_a_day_of_grace(api):
    hook = create(api).json()
    response = api.post(f"/webhooks/{hook['id']}/rotate-secret")
    assert response.status_code == 200
    body = response.json()
    assert body["secret"] != hook["secret"]
    endpoint = WebhookEndpoint.objects.get()
    expires = endpoint.previous_secret_expires_at
    assert body["previous_secret_expires_at"] == expires.isoformat().replace(
        "+00:00", "Z"
    )
    assert services.signing_secrets(endpoint, expires - CURRENT_TIME.resolution) == [
        body["secret"],
        hook["secret"],
    ]
    assert services.signing_secrets(endpoint, expires) == [body["secret"]]


def test_another_orgs_webhooks_are_404_and_untouched(api, other_api, other):
    theirs = create(other_api).json()
    services.emit_event(org=other.org, type="message.sent", data={}, now=CURRENT_TIME)
    delivery = Delivery.objects.get()
    before = snapshot()

    base = f"/webhooks/{theirs['id']}"
    responses = [
        api.get(base),
        api.patch(base, {"enabled": False}),
        api.delete(base),
        api.post(f"{base}/rotate-secret"),
        api.get(f"{base}/deliveries"),
        api.post(f"{base}/deliveries/{delivery.id}/replay"),
    ]
    assert [r.status_code for r in responses] == [404] * 6
    assert all(r.json()["error"]["type"] == "not_found" for r in responses)
    assert api.get("/webhooks").json()["data"] == []
    assert snapshot() == before


def test_a_delivery_of_another_endpoint_cannot_be_replayed_through_mine(api, org):
    mine = create(api).json()
    services.emit_event(org=org, type="message.sent", data={}, now=CURRENT_TIME)
    other_hook = create(api, url="https://other.example.com/x").json()
    delivery = Delivery.objects.get(endpoint_id=mine["id"])
    response = api.post(f"/webhooks/{other_hook['id']}/deliveries/{delivery.id}/replay")
    assert response.status_code == 404
    assert Delivery.objects.count() == 1


def test_deliveries_can_be_filtered_and_paginated(api, org):
    hook = create(api).json()
    for _ in range(3):
        services.emit_event(org=org, type="message.sent", data={}, now=CURRENT_TIME)
    Delivery.objects.filter(pk=Delivery.objects.order_by("pk").first().pk).update(
        status="failed"
    )
    deliveries = f"/webhooks/{hook['id']}/deliveries"
    page = api.get(deliveries, {"limit": 2}).json()
    assert len(page["data"]) == 2 and page["has_more"] is True
    rest = api.get(deliveries, {"limit": 2, "cursor": page["next_cursor"]}).json()
    assert len(rest["data"]) == 1 and rest["has_more"] is False
    failed = api.get(deliveries, {"status": "failed"}).json()["data"]
    assert [d["status"] for d in failed] == ["failed"]
    response = api.get(deliveries, {"status": "lost"})
    assert response.status_code == 400


def test_an_org_has_a_limited_number_of_endpoints(api, monkeypatch):
    monkeypatch.setattr(services, "MAX_ENDPOINTS_PER_ORG", 2)
    assert create(api).status_code == 201
    assert create(api).status_code == 201
    response = create(api)
    assert response.status_code == 400
    assert "at most 2" in response.json()["error"]["message"]
    assert WebhookEndpoint.objects.count() == 2


def test_without_a_key_it_is_401(client):
    assert client.get("/webhooks").status_code == 401
    assert client.post("/webhooks", {"url": URL}).status_code == 401


def test_a_suspended_org_may_read_but_not_change_webhooks(api, org):
    hook = create(api).json()
    org.billing_state = org.BillingState.SUSPENDED
    org.save()
    assert api.get(f"/webhooks/{hook['id']}").status_code == 200
    assert create(api).status_code == 402


def test_the_payload_format_is_in_the_openapi_schema(api):
    schema = api.get("/openapi.json").json()
    payload = schema["components"]["schemas"]["WebhookEventPayload"]
    assert set(payload["properties"]) == {"id", "type", "created_at", "org_id", "data"}
    ref = payload["properties"]["type"]["allOf"][0]["$ref"]
    assert ref == "#/components/schemas/WebhookEventTypeEnum"
    type_enum = schema["components"]["schemas"]["WebhookEventTypeEnum"]["enum"]
    assert type_enum == list(services.EVENT_TYPES)
    for needed in (
        "message.received",
        "usage.exceeded",
        "billing.payment_failed",
        "org.suspended",
        "org.reinstated",
        "retention.warning",
    ):
        assert needed in type_enum
    callback = schema["paths"]["/webhooks"]["post"]["callbacks"]["webhook"]
    request = callback["{$request.body#/url}"]["post"]["requestBody"]
    ref = request["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/WebhookEventPayload")


def test_the_admin_never_shows_the_secret(api, org, client):
    hook = create(api).json()
    services.emit_event(org=org, type="message.sent", data={}, now=CURRENT_TIME)
    delivery = Delivery.objects.get()
    endpoint = WebhookEndpoint.objects.get()
    get_user_model().objects.create_superuser("staff", "staff@ap.test", "pw-staff-1")
    client.login(username="staff", password="pw-staff-1")

    pages = [
        client.get(f"/admin/events/webhookendpoint/{hook['id']}/change/"),
        client.get("/admin/events/webhookendpoint/"),
        client.get(f"/admin/events/delivery/{delivery.id}/change/"),
    ]
    for page in pages:
        assert page.status_code == 200
        html = page.content.decode()
        assert hook["secret"] not in html
        assert hook["secret"].removeprefix("whsec_") not in html
        assert endpoint.secret_encrypted not in html
    assert hook["url"] in pages[0].content.decode()


def test_the_admin_replays_deliveries(org, api, client):
    create(api)
    services.emit_event(org=org, type="message.sent", data={}, now=CURRENT_TIME)
    delivery = Delivery.objects.get()
    get_user_model().objects.create_superuser("staff", "staff@ap.test", "pw-staff-1")
    client.login(username="staff", password="pw-staff-1")

    response = client.post(
        "/admin/events/delivery/",
        {"action": "replay", "_selected_action": [delivery.id]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Queued 1 replays." in response.content.decode()
    replay = Delivery.objects.exclude(pk=delivery.pk).get()
    assert replay.replay_of_id == delivery.id
    assert replay.status == "pending"


def test_staff_can_turn_an_endpoint_back_on_in_the_admin(api, org, client):
    hook = create(api).json()
    WebhookEndpoint.objects.update(
        enabled=False, disabled_reason="failing", failing_since=CURRENT_TIME
    )
    get_user_model().objects.create_superuser("staff", "staff@ap.test", "pw-staff-1")
    client.login(username="staff", password="pw-staff-1")

    response = client.post(
        f"/admin/events/webhookendpoint/{hook['id']}/change/",
        {"description": "back", "enabled": "on"},
    )
    assert response.status_code == 302
    shown = api.get(f"/webhooks/{hook['id']}").json()
    assert shown["enabled"] is True
    assert shown["disabled_reason"] is None
    assert shown["description"] == "back"
    assert shown["url"] == URL
    assert WebhookEndpoint.objects.get().failing_since is None
    entry = AuditEntry.objects.get(action="webhook.updated")
    assert entry.actor_user.username == "staff"

"""Who sees and changes what in the console, and CSRF on every form."""

import re

import pytest
from django.test import Client

from agentpost.orgs.models import ApiKey
from retention.models import RetentionPolicy

PAGES = [
    "/console/usage/",
    "/console/billing/",
    "/console/retention/",
    "/console/keys/",
    "/console/webhooks/",
]


def test_pages_need_a_login(db):
    response = Client().get("/console/keys/")
    assert response.status_code == 302
    assert response["Location"].startswith("/console/login/")


def test_logging_in_with_email_and_password(client, owner):
    response = client.post(
        "/console/login/", {"username": "owner@acme.test", "password": "pw-owner-1"}
    )
    assert response.status_code == 302
    assert client.get("/console/keys/").status_code == 200


def test_a_wrong_password_is_refused(client, owner):
    response = client.post(
        "/console/login/", {"username": "owner@acme.test", "password": "nope"}
    )
    assert response.status_code == 200
    assert b"do not match" in response.content


@pytest.mark.parametrize("path", PAGES)
def test_every_form_carries_a_csrf_token(owner_client, path, settings):
    settings.BILLING_ENABLED = False
    html = owner_client.get(path).content.decode()
    forms = re.findall(r"<form[^>]*method=\"post\"[^>]*>(.*?)</form>", html, re.S)
    assert forms, f"{path} has no forms"
    for form in forms:
        assert 'name="csrfmiddlewaretoken"' in form


def test_a_post_without_csrf_token_is_refused(owner, org):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    response = client.post("/console/keys/create/", {"name": "sneaky"})
    assert response.status_code == 403
    assert ApiKey.objects.filter(org=org).count() == 1


def test_an_owner_creates_a_key_and_sees_it_once(owner_client, org):
    owner_client.post("/console/keys/create/", {"name": "prod"})
    first = owner_client.get("/console/keys/").content.decode()
    token = re.search(r"(ap_[A-Za-z0-9_-]{20,})", first).group(1)
    assert ApiKey.objects.get(org=org, name="prod").prefix == token[:11]
    assert token not in owner_client.get("/console/keys/").content.decode()


def test_a_member_can_look_but_not_change(member_client, org):
    assert member_client.get("/console/keys/").status_code == 200
    assert member_client.post("/console/keys/create/", {"name": "x"}).status_code == 403
    key = ApiKey.objects.get(org=org)
    assert member_client.post(f"/console/keys/{key.id}/revoke/").status_code == 403
    assert (
        member_client.post(
            "/console/retention/", {"retention_days": "5", "confirm": "yes"}
        ).status_code
        == 403
    )
    assert not RetentionPolicy.objects.filter(org=org).exists()
    assert member_client.get("/console/retention/export/").status_code == 403
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None


def test_an_outsider_sees_nothing_of_the_org(outsider_client, org, other):
    key = ApiKey.objects.get(org=org)
    page = outsider_client.get("/console/keys/").content.decode()
    assert key.prefix not in page
    assert org.name not in page
    response = outsider_client.post(f"/console/keys/{key.id}/revoke/")
    assert response.status_code == 404
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None
    # Switching to an org one is not a member of does nothing.
    outsider_client.post("/console/switch/", {"org_id": org.id})
    assert org.name not in outsider_client.get("/console/keys/").content.decode()


def test_the_switcher_moves_between_ones_own_orgs(owner_client, owner):
    from agentpost.orgs.services import create_org

    second = create_org(name="Second Org", owner_email=owner.email).org
    owner_client.post(
        "/console/switch/", {"org_id": second.id, "next": "/console/keys/"}
    )
    page = owner_client.get("/console/keys/").content.decode()
    assert f'value="{second.id}" selected' in page


def test_a_user_without_an_org_is_told_so(db, django_user_model):
    user = django_user_model.objects.create_user(username="lone", email="lone@x.test")
    client = Client()
    client.force_login(user)
    response = client.get("/console/keys/", follow=True)
    assert b"No organization yet" in response.content


def test_a_suspended_org_cannot_make_changes_in_the_console(owner_client, org):
    from agentpost.events.models import WebhookEndpoint

    org.billing_state = "suspended"
    org.save()
    response = owner_client.post("/console/keys/create/", {"name": "more"}, follow=True)
    assert b"suspended for non-payment" in response.content
    assert ApiKey.objects.filter(org=org).count() == 1
    owner_client.post("/console/webhooks/create/", {"url": "https://example.com/h"})
    assert not WebhookEndpoint.objects.filter(org=org).exists()
    # Reads and the export stay.
    assert owner_client.get("/console/keys/").status_code == 200
    assert owner_client.get("/console/retention/export/").status_code == 200

from django.core.management import call_command
from django.utils import timezone

from agentpost.orgs.models import ApiKey
from agentpost.orgs.services import revoke_api_key
from tests.conftest import ApiClient


def test_it_answers_401_without_a_key(org):
    response = ApiClient().get(f"/organizations/{org.id}")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "unauthorized"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_it_answers_401_for_a_wrong_key(org):
    response = ApiClient("ap_not-a-real-key").get(f"/organizations/{org.id}")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Invalid or revoked API key."


def test_it_answers_401_for_a_non_bearer_scheme(org, new_org):
    response = ApiClient().get(
        f"/organizations/{org.id}", HTTP_AUTHORIZATION=f"Basic {new_org.api_key.token}"
    )
    assert response.status_code == 401


def test_it_stores_only_a_hash_of_the_key(new_org):
    key = ApiKey.objects.get(pk=new_org.api_key.key.pk)
    assert new_org.api_key.token not in key.hashed_token
    assert key.prefix == new_org.api_key.token[:11]


def test_a_revoked_key_stops_working(api, org, new_org):
    assert api.get(f"/organizations/{org.id}").status_code == 200
    assert revoke_api_key(key=new_org.api_key.key, now=timezone.now())
    assert api.get(f"/organizations/{org.id}").status_code == 401
    assert org.audit.filter(action="api_key.revoked").exists()


def test_it_records_last_use(api, org, new_org):
    api.get(f"/organizations/{org.id}")
    assert ApiKey.objects.get(pk=new_org.api_key.key.pk).last_used_at is not None


def test_create_org_prints_one_json_object(db, capsys):
    call_command(
        "create_org", "Demo", "--owner", "demo@example.test", "--password", "s3cret-pw"
    )
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["org_id"].startswith("org_")
    assert out["api_key"].startswith("ap_")
    response = ApiClient(out["api_key"]).get(f"/organizations/{out['org_id']}")
    assert response.json()["name"] == "Demo"

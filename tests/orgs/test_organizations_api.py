def test_it_shows_the_keys_own_org(api, org):
    response = api.get(f"/organizations/{org.id}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == org.id
    assert body["billing_state"] == "active"


def test_another_orgs_id_is_404(api, other):
    response = api.get(f"/organizations/{other.org.id}")
    assert response.status_code == 404
    assert response.json() == {
        "error": {"type": "not_found", "message": "No such organization."}
    }


def test_unknown_paths_answer_in_the_error_shape(api):
    response = api.get("/no/such/path")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


def test_the_openapi_schema_describes_the_api(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/inboxes/{inbox_id}/messages" in paths
    assert "/organizations/{org_id}/usage" in paths

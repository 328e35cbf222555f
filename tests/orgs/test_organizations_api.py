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
    for path in (
        "/inboxes/{inbox_id}/messages",
        "/organizations/{org_id}",
        "/organizations/{org_id}/usage",
        "/organizations/{org_id}/usage/history",
        "/organizations/{org_id}/settings",
        "/organizations/{org_id}/retention-policy",
        "/organizations/{org_id}/export",
        "/billing/checkout",
        "/billing/portal",
        "/billing/subscription",
        "/billing/subscription/change-plan",
        "/billing/subscription/cancel",
        "/webhooks",
    ):
        assert path in paths, path
    security = response.json()["components"]["securitySchemes"]
    assert security["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An org's API key: `Authorization: Bearer ap_...`.",
    }


def test_the_docs_page_needs_no_cdn(client):
    page = client.get("/docs").content.decode()
    assert "/static/drf_spectacular_sidecar/redoc/" in page
    assert "cdn.jsdelivr.net" not in page


def test_without_billing_the_org_shows_the_selfhosted_plan(api, org, settings):
    settings.BILLING_ENABLED = False
    assert api.get(f"/organizations/{org.id}").json()["plan"] == "selfhosted"
    settings.BILLING_ENABLED = True
    assert api.get(f"/organizations/{org.id}").json()["plan"] == "free"

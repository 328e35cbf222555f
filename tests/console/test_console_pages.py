"""What owners and members see on the console pages (server side)."""

from django.utils import timezone

from agentpost import metering
from agentpost.orgs.models import Organization
from billing.models import DunningCase


def test_the_usage_page_shows_counters_and_a_chart(owner_client, org):
    metering.charge(
        org_id=org.id, counter=metering.API_CALLS, now=timezone.now(), amount=41
    )
    page = owner_client.get("/console/usage/").content.decode()
    assert 'data-testid="meter-api_calls"' in page
    assert "<svg" in page and "API calls, last 30 days" in page
    data = owner_client.get("/console/usage.json").json()
    api_calls = next(m for m in data["meters"] if m["counter"] == "api_calls")
    assert api_calls["current"] == 41


def test_a_past_due_org_sees_the_dunning_banner_everywhere(owner_client, org):
    deadline = timezone.now() + timezone.timedelta(days=3)
    Organization.objects.filter(pk=org.pk).update(
        billing_state="past_due", grace_deadline=deadline
    )
    DunningCase.objects.create(
        org=org,
        invoice_id="in_1",
        first_failed_at=timezone.now(),
        grace_deadline=deadline,
        hosted_invoice_url="https://invoice.stripe.test/i/in_1",
    )
    for path in ("/console/usage/", "/console/keys/", "/console/retention/"):
        page = owner_client.get(path).content.decode()
        assert 'data-testid="dunning-banner"' in page
        assert "Your last payment failed." in page
        assert "https://invoice.stripe.test/i/in_1" in page


def test_a_member_cannot_change_the_plan(member_client, org, settings):
    settings.BILLING_ENABLED = True
    assert member_client.get("/console/billing/").status_code == 200
    assert (
        member_client.post("/console/billing/checkout/", {"plan": "pro"}).status_code
        == 403
    )
    assert (
        member_client.post("/console/billing/cancel/", {"when": "now"}).status_code
        == 403
    )
    assert member_client.get("/console/billing/change/?plan=pro").status_code == 403
    org.refresh_from_db()
    assert org.plan == "free"


def test_retention_is_previewed_before_it_is_saved(owner_client, org):
    page = owner_client.post(
        "/console/retention/", {"retention_days": "30"}
    ).content.decode()
    assert 'data-testid="policy-preview"' in page
    assert "With <strong>30 days</strong>" in page
    from retention.models import RetentionPolicy

    # Previewing saves nothing.
    assert not RetentionPolicy.objects.filter(org=org).exists()
    owner_client.post("/console/retention/", {"retention_days": "30", "confirm": "yes"})
    assert RetentionPolicy.objects.get(org=org).retention_days == 30


def test_a_bad_retention_value_is_explained(owner_client, org):
    page = owner_client.post(
        "/console/retention/", {"retention_days": "0"}
    ).content.decode()
    assert "Enter a whole number of days" in page

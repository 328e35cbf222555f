from billing.models import OrgSubscription, PaymentGrant
from tests.billing.conftest import control


def test_billing_is_404_while_disabled(api, settings):
    settings.BILLING_ENABLED = False
    response = api.get("/billing/subscription")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "billing_disabled"


def test_a_free_org_has_no_subscription(api, plans):
    body = api.get("/billing/subscription").json()
    assert body["status"] == "none"
    assert body["plan"]["code"] == "free"


def test_checkout_subscribes_the_org(api, org, subscribe):
    subscribe("starter")
    body = api.get("/billing/subscription").json()
    assert body["status"] == "active"
    assert body["plan"]["code"] == "starter"
    assert body["plan"]["price_cents"] == 1900
    assert body["current_period_end"] > body["current_period_start"]
    org.refresh_from_db()
    assert org.plan == "starter"
    # The first invoice granted the payment once, not again for the checkout.
    assert PaymentGrant.objects.filter(org=org).count() == 1


def test_checkout_reuses_the_customer(api, org, plans, stripe_standin):
    first = api.post("/billing/checkout", {"plan": "starter"})
    second = api.post("/billing/checkout", {"plan": "pro"})
    assert first.status_code == second.status_code == 201
    assert len(stripe_standin.state.objects["customer"]) == 1
    account = OrgSubscription.objects.get(org=org)
    assert account.stripe_customer_id in stripe_standin.state.objects["customer"]


def test_checkout_for_a_subscribed_org_is_409(api, subscribe):
    subscribe("starter")
    response = api.post("/billing/checkout", {"plan": "pro"})
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "subscription_exists"
    assert "change-plan" in response.json()["error"]["message"]


def test_checkout_refuses_unknown_plans_and_bad_urls(api, plans):
    response = api.post("/billing/checkout", {"plan": "platinum"})
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "invalid_plan"
    response = api.post(
        "/billing/checkout", {"plan": "pro", "success_url": "javascript:x"}
    )
    assert response.status_code == 400
    assert "success_url" in response.json()["error"]["fields"]


def test_the_portal_needs_a_customer_first(api, plans, subscribe, stripe_standin):
    assert api.post("/billing/portal", {}).status_code == 409
    subscribe("starter")
    response = api.post("/billing/portal", {"return_url": "https://app.example.com/b"})
    assert response.status_code == 201
    assert response.json()["url"].startswith(f"{stripe_standin.url}/p/session/")


def test_an_upgrade_is_previewed_then_prorated(api, org, subscribe, stripe_standin):
    subscribe("starter")
    item = next(iter(stripe_standin.state.objects["subscription"].values()))["items"][
        "data"
    ][0]
    halfway = (item["current_period_start"] + item["current_period_end"]) // 2

    preview = api.post(
        "/billing/subscription/change-plan",
        {"plan": "pro", "preview": True, "proration_date": halfway},
    ).json()
    assert preview["preview"] is True
    assert preview["amount_due_now_cents"] == (9900 - 1900) // 2
    org.refresh_from_db()
    assert org.plan == "starter"  # a preview changes nothing

    invoices_before = len(stripe_standin.state.objects["invoice"])
    done = api.post(
        "/billing/subscription/change-plan", {"plan": "pro", "proration_date": halfway}
    ).json()
    assert done["preview"] is False
    assert done["amount_due_now_cents"] == preview["amount_due_now_cents"]
    assert done["subscription"]["plan"]["code"] == "pro"
    org.refresh_from_db()
    assert org.plan == "pro"
    # An upgrade is invoiced at once for the prorated difference.
    new_invoices = len(stripe_standin.state.objects["invoice"]) - invoices_before
    assert new_invoices == 1


def test_a_downgrade_credits_the_next_invoice(api, org, subscribe, stripe_standin):
    subscribe("pro")
    invoices_before = len(stripe_standin.state.objects["invoice"])
    response = api.post("/billing/subscription/change-plan", {"plan": "starter"})
    assert response.status_code == 200
    org.refresh_from_db()
    assert org.plan == "starter"
    assert len(stripe_standin.state.objects["invoice"]) == invoices_before
    customer = next(iter(stripe_standin.state.objects["customer"].values()))
    assert customer["balance"] < 0


def test_change_plan_without_a_subscription_is_409(api, plans):
    response = api.post("/billing/subscription/change-plan", {"plan": "pro"})
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "no_subscription"


def test_cancel_at_period_end_can_be_undone(api, org, subscribe):
    subscribe("starter")
    body = api.post("/billing/subscription/cancel", {"at_period_end": True}).json()
    assert body["cancel_at_period_end"] is True
    assert body["plan"]["code"] == "starter"  # paid until the period ends
    assert body["next_invoice_amount_cents"] is None

    body = api.post("/billing/subscription/resume").json()
    assert body["cancel_at_period_end"] is False
    assert body["next_invoice_amount_cents"] == 1900


def test_a_cancellation_at_period_end_lands_on_the_free_plan(
    api, org, subscribe, stripe_standin, deliver
):
    subscribe("starter")
    api.post("/billing/subscription/cancel", {"at_period_end": True})
    sub_id = OrgSubscription.objects.get(org=org).stripe_subscription_id
    deliver(*control(stripe_standin, f"subscriptions/{sub_id}/renew")["events"])
    org.refresh_from_db()
    assert org.plan == "free"
    assert org.billing_state == "active"
    assert api.get("/billing/subscription").json()["status"] == "canceled"


def test_cancel_now_moves_to_free_at_once(api, org, subscribe):
    subscribe("pro")
    body = api.post("/billing/subscription/cancel", {"at_period_end": False}).json()
    assert body["status"] == "canceled"
    assert body["plan"]["code"] == "free"
    assert body["current_period_end"] is None


def test_a_stripe_error_becomes_our_error(api, plans, stripe_standin):
    from billing.standin.state import StripeError

    stripe_standin.state.fail_next.append(StripeError(500, "Stripe internal details"))
    stripe_standin.state.fail_next.append(StripeError(500, "Stripe internal details"))
    stripe_standin.state.fail_next.append(StripeError(500, "Stripe internal details"))
    response = api.post("/billing/checkout", {"plan": "pro"})
    assert response.status_code == 502
    body = response.json()
    assert body["error"]["type"] == "billing_provider_error"
    assert "internal details" not in response.content.decode()


def test_a_suspended_org_can_still_use_billing(api, org, subscribe):
    subscribe("starter")
    org.billing_state = "suspended"
    org.save()
    assert api.get("/billing/subscription").status_code == 200
    assert api.post("/billing/portal", {}).status_code == 201

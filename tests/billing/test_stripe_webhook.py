"""The Stripe webhook: verification, storing once, and the real-shaped fixtures."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest

from billing.models import (
    DunningCase,
    OrgSubscription,
    PaymentGrant,
    PlanPrice,
    StripeEvent,
)
from billing.standin.server import sign_payload
from billing.webhooks import replay_event
from tests.billing.conftest import WEBHOOK_SECRET, post_event

FIXTURES = Path(__file__).parent.parent / "fixtures" / "stripe"


def fixture(prefix: str, **changes) -> dict:
    path = next(FIXTURES.glob(f"{prefix}_*.json"))
    event = json.loads(path.read_text())
    event.update(changes)
    return event


def link(
    org,
    customer_id: str,
    *,
    subscription_id: str = "",
    status: str = "active",
    plan: str = "pro",
) -> OrgSubscription:
    """Make ``org`` the owner of a Stripe customer named in a fixture."""
    account, _ = OrgSubscription.objects.update_or_create(
        org=org,
        defaults={
            "stripe_customer_id": customer_id,
            "stripe_subscription_id": subscription_id,
            "status": status,
            "plan_code": plan,
        },
    )
    org.plan = plan
    org.save()
    return account


def subscription_like(event_prefix: str, **changes) -> dict:
    obj = copy.deepcopy(fixture(event_prefix)["data"]["object"])
    obj.update(changes)
    return obj


# Verification


def test_an_unsigned_event_is_refused_and_stored_nowhere(client, plans):
    response = client.post(
        "/billing/webhook", json.dumps(fixture("20")), content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_signature"
    assert not StripeEvent.objects.exists()


def test_an_event_signed_with_another_secret_is_refused(client, plans):
    response = post_event(client, fixture("20"), secret="whsec_someone_else")
    assert response.status_code == 400
    assert not StripeEvent.objects.exists()


def test_a_replayed_old_signature_is_refused(client, plans):
    response = post_event(client, fixture("20"), timestamp=int(time.time()) - 3600)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "The signature does not verify."
    assert not StripeEvent.objects.exists()


def test_a_tampered_body_is_refused(client, plans):
    payload = json.dumps(fixture("20")).encode()
    signature = sign_payload(payload, WEBHOOK_SECRET)
    response = client.post(
        "/billing/webhook",
        payload.replace(b"canceled", b"active"),
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=signature,
    )
    assert response.status_code == 400
    assert not StripeEvent.objects.exists()


def test_signed_garbage_is_a_clear_400(client, plans):
    payload = b"{not json"
    response = client.post(
        "/billing/webhook",
        payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign_payload(payload, WEBHOOK_SECRET),
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_json"


def test_the_webhook_is_404_while_billing_is_off(client, settings):
    settings.BILLING_ENABLED = False
    assert post_event(client, fixture("20")).status_code == 404


# Storing once


def test_a_duplicate_delivery_is_stored_and_processed_once(
    org, plans, stripe_standin, deliver
):
    link(org, "cus_fakefakefake", subscription_id="sub_fakefakefake")
    stripe_standin.state.seed(fixture("03")["data"]["object"])
    stripe_standin.state.seed(
        subscription_like("10", id="sub_fakefakefake", customer="cus_fakefakefake")
    )
    first, second = deliver(fixture("03"), fixture("03"))
    assert first.json()["duplicate"] is False
    assert second.json()["duplicate"] is True
    assert StripeEvent.objects.get().status == "processed"
    assert PaymentGrant.objects.filter(org=org).count() == 1


def test_paid_and_payment_succeeded_for_one_invoice_grant_once(
    org, plans, stripe_standin, deliver
):
    link(org, "cus_fakefakefake", subscription_id="sub_fakefakefake")
    stripe_standin.state.seed(fixture("01")["data"]["object"])
    stripe_standin.state.seed(
        subscription_like("10", id="sub_fakefakefake", customer="cus_fakefakefake")
    )
    responses = deliver(fixture("01"), fixture("03"))
    assert [r.status_code for r in responses] == [200, 200]
    assert StripeEvent.objects.filter(status="processed").count() == 2
    assert PaymentGrant.objects.filter(org=org).count() == 1


def test_events_sharing_an_id_are_one_event(org, plans, stripe_standin, deliver):
    # 01, 02 and 20 all carry evt_fakefakefake: only the first is taken.
    deliver(fixture("01"), fixture("02"), fixture("20"))
    assert StripeEvent.objects.count() == 1
    # Given fresh ids, as Stripe would, they are three events.
    deliver(fixture("02", id="evt_fresh_02"), fixture("20", id="evt_fresh_20"))
    assert StripeEvent.objects.count() == 3


# Unknown and unhandled


@pytest.mark.parametrize("prefix", ["04", "08", "14", "21"])
def test_events_for_unknown_customers_are_ignored_with_2xx(prefix, plans, deliver):
    (response,) = deliver(fixture(prefix))
    assert response.status_code == 200
    row = StripeEvent.objects.get()
    assert row.status == "ignored"
    assert row.detail


def test_an_unhandled_type_is_stored_and_ignored(plans, deliver):
    (response,) = deliver(fixture("20", id="evt_other", type="customer.tax_id.created"))
    assert response.status_code == 200
    row = StripeEvent.objects.get()
    assert (row.status, row.detail) == (
        "ignored",
        "event type customer.tax_id.created is not handled",
    )


def test_a_failed_event_is_recorded_and_can_be_replayed(
    org, plans, stripe_standin, deliver
):
    from billing.standin.state import StripeError

    link(org, "cus_fake", subscription_id="sub_fake_999")
    stripe_standin.state.seed(subscription_like("10"))
    PlanPrice.objects.filter(plan_id="pro").update(stripe_price_id="price_fake")
    stripe_standin.state.fail_next.extend([StripeError(500, "down")] * 3)
    deliver(fixture("10"))
    row = StripeEvent.objects.get()
    assert row.status == "failed"
    assert "BillingProviderError" in row.detail

    assert replay_event(event_id=row.id) == "processed"
    org.refresh_from_db()
    assert org.current_period_end.timestamp() == 1703951826


# Both API shapes


def test_an_old_shape_renewal_moves_the_period(org, plans, stripe_standin, deliver):
    link(org, "cus_fake", subscription_id="sub_fake_999")
    PlanPrice.objects.filter(plan_id="pro").update(stripe_price_id="price_fake")
    stripe_standin.state.seed(subscription_like("10"))
    deliver(fixture("10"))
    org.refresh_from_db()
    assert org.plan == "pro"
    assert int(org.current_period_start.timestamp()) == 1701359826
    assert int(org.current_period_end.timestamp()) == 1703951826


def test_a_new_shape_renewal_reads_the_period_from_items(
    org, plans, stripe_standin, deliver
):
    obj = fixture("11")["data"]["object"]
    link(org, obj["customer"], subscription_id=obj["id"])
    PlanPrice.objects.filter(plan_id="pro").update(
        stripe_price_id=obj["items"]["data"][0]["price"]["id"]
    )
    stripe_standin.state.seed(obj)
    deliver(fixture("11"))
    org.refresh_from_db()
    assert int(org.current_period_start.timestamp()) == 1758919042
    assert int(org.current_period_end.timestamp()) == 1759005442


def test_a_subscription_with_two_prices_finds_its_plan(
    org, plans, stripe_standin, deliver
):
    obj = fixture("15")["data"]["object"]
    link(org, obj["customer"], subscription_id=obj["id"], plan="starter")
    second_price = obj["items"]["data"][1]
    second_price_id = (second_price.get("price") or second_price["plan"])["id"]
    PlanPrice.objects.filter(plan_id="pro").update(stripe_price_id=second_price_id)
    stripe_standin.state.seed(obj)
    deliver(fixture("15"))
    org.refresh_from_db()
    assert org.plan == "pro"


def test_checkout_completion_links_the_subscription(
    org, plans, stripe_standin, deliver
):
    event = fixture("30")
    session = event["data"]["object"]
    session["metadata"] = {"org_id": org.id}
    stripe_standin.state.seed(
        subscription_like(
            "10", id=session["subscription"], customer=session["customer"]
        )
    )
    PlanPrice.objects.filter(plan_id="pro").update(stripe_price_id="price_fake")
    deliver(event)
    account = OrgSubscription.objects.get(org=org)
    assert account.stripe_customer_id == session["customer"]
    assert account.stripe_subscription_id == session["subscription"]
    org.refresh_from_db()
    assert org.plan == "pro"
    assert not PaymentGrant.objects.exists()  # the invoice grants, not the checkout


# Order does not matter


def test_reordered_events_end_in_stripes_latest_state(
    api, org, subscribe, stripe_standin, deliver, client
):
    subscribe("starter")
    api.post("/billing/subscription/change-plan", {"plan": "pro"})
    # Stripe's latest word is "pro". An old "starter" update arriving late, and
    # the checkout's events delivered all over again, change nothing.
    stale = [e for e in StripeEvent.objects.order_by("received_at")]
    for row in reversed(stale):
        deliver({**row.payload, "id": row.id + "_again"})
    org.refresh_from_db()
    assert org.plan == "pro"
    assert api.get("/billing/subscription").json()["plan"]["code"] == "pro"


def test_a_deleted_subscription_moves_the_org_to_free(
    org, plans, stripe_standin, deliver
):
    obj = fixture("20")["data"]["object"]
    link(org, obj["customer"], subscription_id=obj["id"])
    stripe_standin.state.seed(obj)
    deliver(fixture("20"))
    org.refresh_from_db()
    assert org.plan == "free"
    assert org.billing_state == "active"
    assert org.current_period_end is None


def test_an_old_subscription_ending_leaves_the_live_one(
    org, plans, stripe_standin, deliver
):
    obj = fixture("20")["data"]["object"]
    link(org, obj["customer"], subscription_id="sub_the_live_one")
    stripe_standin.state.seed(obj)
    deliver(fixture("20"))
    org.refresh_from_db()
    assert org.plan == "pro"
    assert not DunningCase.objects.exists()

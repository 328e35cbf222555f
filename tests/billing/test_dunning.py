"""Dunning end to end against the Stripe stand-in, with a frozen clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core import mail
from django.core.management import call_command

from agentpost.events.models import Event
from agentpost.mail.inbound import store_inbound_mail
from billing import dunning, stripe_data
from billing.models import DunningCase, OrgSubscription, PlanPrice
from tests.billing.conftest import control
from tests.billing.test_stripe_webhook import fixture, link, subscription_like

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
RAW = (
    b"From: a@example.com\r\nTo: agent@agentpost.test\r\n"
    b"Subject: while away\r\n\r\nhi\r\n"
)


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def failed(api, org, subscribe, stripe_standin, deliver, clock):
    """A starter subscription whose renewal payment failed at T0."""
    subscribe("starter")
    sub_id = OrgSubscription.objects.get(org=org).stripe_subscription_id
    events = control(stripe_standin, f"subscriptions/{sub_id}/renew", pay="false")[
        "events"
    ]
    mail.outbox.clear()
    deliver(*events)
    org.refresh_from_db()
    return next(e for e in events if e["type"] == "invoice.payment_failed")["data"][
        "object"
    ]


def subjects() -> list[str]:
    return [m.subject for m in mail.outbox]


def test_a_failed_payment_starts_the_grace_period(org, failed):
    assert org.billing_state == "past_due"
    assert org.grace_deadline == T0 + timedelta(days=7)
    assert subjects() == ["Payment failed for Acme Agents: action needed"]
    assert "pay the invoice" in mail.outbox[0].alternatives[0][0].lower()
    assert Event.objects.filter(org=org, type="billing.payment_failed").count() == 1


def test_the_whole_flow_from_failure_to_reinstatement(
    api,
    org,
    inbox,
    failed,
    stripe_standin,
    deliver,
    clock,
    django_capture_on_commit_callbacks,
):
    deadline = T0 + timedelta(days=7)

    # A later failure of the same invoice does not move the deadline.
    clock.move_to(T0 + timedelta(days=3))
    deliver(*control(stripe_standin, f"invoices/{failed['id']}/fail")["events"])
    org.refresh_from_db()
    assert org.grace_deadline == deadline

    # Reminded once, two days before, however often the task runs.
    clock.move_to(deadline - timedelta(days=2))
    mail.outbox.clear()
    call_command("run_dunning", stdout=open("/dev/null", "w"))
    call_command("run_dunning", stdout=open("/dev/null", "w"))
    assert subjects() == ["Acme Agents will be suspended soon: payment still failing"]

    # Not a minute early.
    clock.move_to(deadline - timedelta(minutes=1))
    assert dunning.run_dunning(now=deadline - timedelta(minutes=1))["suspended"] == 0
    org.refresh_from_db()
    assert org.billing_state == "past_due"

    clock.move_to(deadline)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert dunning.run_dunning(now=deadline)["suspended"] == 1
        assert dunning.run_dunning(now=deadline)["suspended"] == 0
    org.refresh_from_db()
    assert org.billing_state == "suspended"
    assert subjects() == ["Acme Agents is suspended for non-payment"]
    assert Event.objects.filter(org=org, type="org.suspended").count() == 1

    # Access goes, data stays.
    send = api.post(
        f"/inboxes/{inbox.id}/messages", {"to": ["x@example.com"], "text": "hi"}
    )
    assert send.status_code == 402
    assert send.json()["error"]["type"] == "org_suspended"
    assert api.post("/inboxes", {"local_part": "new"}).status_code == 402
    assert api.get(f"/inboxes/{inbox.id}/messages").status_code == 200
    assert api.get("/billing/subscription").json()["billing_state"] == "suspended"

    # Inbound mail is stored but held, not shown.
    held = store_inbound_mail(inbox=inbox, raw=RAW, now=deadline)
    assert held.status == "held"
    assert api.get(f"/messages/{held.id}").status_code == 404
    assert not Event.objects.filter(type="message.received").exists()

    # Payment reinstates at once and releases what was held.
    clock.move_to(deadline + timedelta(days=1))
    mail.outbox.clear()
    deliver(*control(stripe_standin, f"invoices/{failed['id']}/pay")["events"])
    org.refresh_from_db()
    assert org.billing_state == "active"
    assert org.grace_deadline is None
    assert subjects() == ["Acme Agents is active again"]
    assert api.get(f"/messages/{held.id}").json()["subject"] == "while away"
    assert Event.objects.filter(type="message.received").count() == 1
    assert Event.objects.filter(org=org, type="org.reinstated").count() == 1
    assert (
        api.post(
            f"/inboxes/{inbox.id}/messages", {"to": ["x@example.com"], "text": "hi"}
        ).status_code
        == 202
    )


def test_a_payment_during_grace_ends_it(org, failed, stripe_standin, deliver, clock):
    clock.move_to(T0 + timedelta(days=2))
    deliver(*control(stripe_standin, f"invoices/{failed['id']}/pay")["events"])
    org.refresh_from_db()
    assert org.billing_state == "active"
    assert dunning.run_dunning(now=T0 + timedelta(days=8))["suspended"] == 0
    assert DunningCase.objects.get().resolved_at is not None


def test_a_late_payment_failed_after_the_payment_changes_nothing(
    org, failed, stripe_standin, deliver, clock
):
    events = control(stripe_standin, f"invoices/{failed['id']}/pay")["events"]
    deliver(*events)
    late = {
        "id": "evt_late_failure",
        "object": "event",
        "type": "invoice.payment_failed",
        "api_version": "2025-08-27.basil",
        "created": int(T0.timestamp()) - 60,
        "data": {"object": failed},
    }
    deliver(late)
    org.refresh_from_db()
    assert org.billing_state == "active"
    assert DunningCase.objects.filter(resolved_at__isnull=True).count() == 0


def test_retries_after_a_cancellation_do_not_suspend_a_free_org(
    api, org, failed, stripe_standin, deliver, clock
):
    api.post("/billing/subscription/cancel", {"at_period_end": False})
    org.refresh_from_db()
    assert (org.plan, org.billing_state) == ("free", "active")
    deliver(
        *control(stripe_standin, f"invoices/{failed['id']}/fail", final="true")[
            "events"
        ]
    )
    assert dunning.run_dunning(now=T0 + timedelta(days=30))["suspended"] == 0
    org.refresh_from_db()
    assert (org.plan, org.billing_state) == ("free", "active")


def test_staff_extend_the_grace_period_with_a_reason(org, failed, admin_client):
    response = admin_client.post(
        f"/admin/orgs/organization/{org.id}/billing/extend-grace/",
        {"reason": "customer called, card on its way", "days": 5},
    )
    assert response.status_code == 302
    org.refresh_from_db()
    assert org.grace_deadline == T0 + timedelta(days=12)
    entry = org.audit.get(action="billing.grace_extended")
    assert entry.reason == "customer called, card on its way"
    assert entry.actor_user.is_superuser


def test_staff_suspend_and_reinstate_are_audited(org, admin_client, db):
    admin_client.post(
        f"/admin/orgs/organization/{org.id}/billing/suspend/",
        {"reason": "fraud review"},
    )
    org.refresh_from_db()
    assert org.billing_state == "suspended"
    admin_client.post(
        f"/admin/orgs/organization/{org.id}/billing/reinstate/", {"reason": "cleared"}
    )
    org.refresh_from_db()
    assert org.billing_state == "active"
    assert list(org.audit.order_by("id").values_list("action", "reason")) == [
        ("billing.suspended", "fraud review"),
        ("billing.reinstated", "cleared"),
    ]


def test_a_staff_action_needs_a_reason(org, admin_client, db):
    response = admin_client.post(
        f"/admin/orgs/organization/{org.id}/billing/suspend/", {}
    )
    assert response.status_code == 200
    org.refresh_from_db()
    assert org.billing_state == "active"


def test_the_grace_period_follows_org_then_plan_then_setting(org, settings, plans):
    settings.BILLING_GRACE_PERIOD_DAYS = 7
    org.plan = "pro"
    assert dunning.grace_period(org) == timedelta(days=7)
    PlanPrice.objects.filter(plan_id="pro").update(grace_period_days=14)
    assert dunning.grace_period(org) == timedelta(days=14)
    OrgSubscription.objects.create(
        org=org, stripe_customer_id="cus_x", grace_period_days=3
    )
    assert dunning.grace_period(org) == timedelta(days=3)


# The fixtures, posted signed


def test_fixtures_05_then_06_open_one_case_and_mark_it_final(
    org, plans, stripe_standin, deliver, clock
):
    link(org, "cus_1234", subscription_id="sub_1234")
    stripe_standin.state.seed(
        subscription_like("10", id="sub_1234", customer="cus_1234")
    )
    stripe_standin.state.seed(fixture("05")["data"]["object"])
    deliver(fixture("05"))
    case = DunningCase.objects.get()
    assert case.final is False
    org.refresh_from_db()
    assert org.billing_state == "past_due"

    clock.move_to(T0 + timedelta(days=4))
    stripe_standin.state.seed(fixture("06")["data"]["object"])
    deliver(fixture("06"))
    case.refresh_from_db()
    assert case.final is True
    assert case.attempts == 4
    assert case.grace_deadline == T0 + timedelta(days=7)


def test_fixture_07_send_invoice_null_next_attempt_is_not_final(
    org, plans, stripe_standin, deliver
):
    invoice = fixture("07")["data"]["object"]
    assert stripe_data.invoice_is_final_failure(invoice) is False
    assert stripe_data.invoice_is_final_failure(fixture("06")["data"]["object"]) is True

    # The same invoice billed on a subscription is dunned, not treated as final.
    invoice = {**invoice, "subscription": "sub_fake_999"}
    link(org, invoice["customer"], subscription_id="sub_fake_999")
    stripe_standin.state.seed(subscription_like("10", customer=invoice["customer"]))
    stripe_standin.state.seed(invoice)
    event = fixture("07")
    event["data"]["object"] = invoice
    deliver(event)
    case = DunningCase.objects.get()
    assert case.final is False


def test_fixtures_12_and_13_past_due_and_back(
    org, plans, stripe_standin, deliver, clock
):
    link(org, "cus_fake", subscription_id="sub_fake_999")
    PlanPrice.objects.filter(plan_id="pro").update(stripe_price_id="price_fake")
    DunningCase.objects.create(
        org=org,
        invoice_id="in_fake",
        first_failed_at=T0,
        grace_deadline=T0 + timedelta(days=7),
    )
    org.billing_state, org.grace_deadline = "past_due", T0 + timedelta(days=7)
    org.save()

    stripe_standin.state.seed(fixture("12")["data"]["object"])
    stripe_standin.state.seed(
        {
            "id": "in_fake",
            "object": "invoice",
            "customer": "cus_fake",
            "status": "open",
            "subscription": "sub_fake_999",
            "amount_due": 100,
        }
    )
    deliver(fixture("12"))
    org.refresh_from_db()
    assert (
        org.billing_state == "past_due"
    )  # the subscription says so, the invoice unpaid

    # Active again, but the overdue invoice still unpaid: no reinstatement.
    stripe_standin.state.seed(fixture("13")["data"]["object"])
    deliver(fixture("13"))
    org.refresh_from_db()
    assert org.billing_state == "past_due"

    # Once Stripe says the invoice is paid, the same event reinstates.
    stripe_standin.state.objects["invoice"]["in_fake"]["status"] = "paid"
    deliver(fixture("13", id="evt_13_again"))
    org.refresh_from_db()
    assert org.billing_state == "active"


def test_fixture_20_deletion_after_retries_means_free_not_suspended(
    org, plans, stripe_standin, deliver
):
    obj = fixture("20")["data"]["object"]
    link(org, obj["customer"], subscription_id=obj["id"])
    org.billing_state, org.grace_deadline = "past_due", T0
    org.save()
    stripe_standin.state.seed(obj)
    deliver(fixture("20"))
    org.refresh_from_db()
    assert (org.plan, org.billing_state, org.grace_deadline) == ("free", "active", None)
    assert dunning.run_dunning(now=T0 + timedelta(days=30))["suspended"] == 0


@pytest.mark.django_db(transaction=True)
def test_two_dunning_runs_at_once_suspend_and_email_once(settings):
    import threading

    from django.db import connection

    from agentpost.orgs.services import create_org

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL's row locks; CI runs this on PostgreSQL")
    org = create_org(name="Racy", owner_email="racy@example.test").org
    org.billing_state, org.grace_deadline = "past_due", T0
    org.save()
    barrier = threading.Barrier(2)
    results = []

    def run():
        barrier.wait()
        results.append(dunning.suspend_overdue(now=T0 + timedelta(hours=1)))
        connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0, 1]
    assert [m.subject for m in mail.outbox] == ["Racy is suspended for non-payment"]


def test_the_admin_org_page_shows_usage_limits_and_failed_events(
    org, admin_client, settings
):
    from django.utils import timezone

    from agentpost import metering
    from billing.models import StripeEvent

    settings.BILLING_ENABLED = True
    metering.charge(org_id=org.id, counter="api_calls", now=timezone.now(), amount=12)
    StripeEvent.objects.create(
        id="evt_broken",
        type="invoice.paid",
        created=timezone.now(),
        payload={},
        org=org,
        status="failed",
        received_at=timezone.now(),
    )
    page = admin_client.get(
        f"/admin/orgs/organization/{org.id}/change/"
    ).content.decode()
    assert "<td>api_calls</td><td>12</td>" in page
    assert "plan free" in page
    assert "1 failed" in page
    assert "Extend grace" in page and "Suspend" in page and "Reinstate" in page

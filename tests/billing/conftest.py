"""Billing tests talk to the Stripe stand-in over real HTTP through `stripe`."""

from __future__ import annotations

import json
import urllib.request

import pytest
from django.core.management import call_command

from billing.models import PlanPrice
from billing.standin.server import StandinServer, sign_payload
from usage.models import Plan, PlanLimit
from usage.plans import seed_plans

WEBHOOK_SECRET = "whsec_test_standin_secret"
PLANS = [
    ("starter", 1900, 1),
    ("pro", 9900, 2),
]


@pytest.fixture
def stripe_standin(settings):
    server = StandinServer().start()
    settings.BILLING_ENABLED = True
    settings.STRIPE_SECRET_KEY = "sk_test_51StandinKeyForLocalTestsOnly000000000000"
    settings.STRIPE_API_BASE = server.url
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    yield server
    server.stop()


@pytest.fixture
def plans(stripe_standin, db):
    # The test database is built without migrations: seed what they would.
    seed_plans(Plan, PlanLimit)
    for code, cents, order in PLANS:
        PlanPrice.objects.update_or_create(
            plan_id=code,
            defaults={
                "lookup_key": f"agentpost_{code}_monthly",
                "unit_amount_cents": cents,
                "sort_order": order,
            },
        )
    call_command("billing_sync_plans", stdout=open("/dev/null", "w"))
    return {p.plan_id: p for p in PlanPrice.objects.all()}


def control(server: StandinServer, path: str, **params) -> dict:
    """Play what a customer or Stripe's scheduler does; return Stripe's events."""
    data = "&".join(f"{k}={v}" for k, v in params.items()).encode()
    request = urllib.request.Request(
        f"{server.url}/_standin/{path}", data=data, method="POST"
    )
    return json.load(urllib.request.urlopen(request))


def post_event(client, event: dict, *, secret: str = WEBHOOK_SECRET, timestamp=None):
    payload = json.dumps(event).encode()
    return client.post(
        "/billing/webhook",
        payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign_payload(payload, secret, timestamp),
    )


@pytest.fixture
def deliver(client, django_capture_on_commit_callbacks):
    """Post events to the webhook, signed, and run the work they queue."""

    def deliver(*events: dict):
        responses = []
        for event in events:
            with django_capture_on_commit_callbacks(execute=True):
                responses.append(post_event(client, event))
        return responses

    return deliver


@pytest.fixture
def subscribe(api, stripe_standin, plans, deliver):
    """Subscribe the org to a plan through checkout, as a customer would."""

    def subscribe(plan: str = "starter") -> list[dict]:
        response = api.post("/billing/checkout", {"plan": plan})
        assert response.status_code == 201, response.content
        session_id = response.json()["url"].rsplit("/", 1)[-1]
        events = control(stripe_standin, f"checkout/{session_id}/complete")["events"]
        deliver(*events)
        return events

    return subscribe

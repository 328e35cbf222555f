"""
The console in a real headless Chromium (Debian's package, driven by Playwright).

Each test saves a screenshot under tests/artifacts/ so a person can look at the
pages. Stripe is the stand-in, whose checkout page the browser visits and pays.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.core.management import call_command

from agentpost.orgs.models import Organization
from billing.models import DunningCase
from billing.standin.server import StandinServer
from tests.billing.conftest import WEBHOOK_SECRET, control

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# Playwright's sync API keeps an event loop running in this thread, which makes
# Django refuse ORM calls from the test itself; the test is not async code.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"needs Debian's chromium at {CHROMIUM} (.ci/run installs it)",
    ),
]


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server, settings):
    settings.SITE_URL = live_server.url
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


@pytest.fixture
def standin(live_server, settings, transactional_db):
    from usage.models import Plan, PlanLimit
    from usage.plans import seed_plans

    server = StandinServer(
        webhook_url=f"{live_server.url}/billing/webhook", webhook_secret=WEBHOOK_SECRET
    ).start()
    settings.BILLING_ENABLED = True
    settings.STRIPE_SECRET_KEY = "sk_test_51StandinKeyForLocalTestsOnly000000000000"
    settings.STRIPE_API_BASE = server.url
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    seed_plans(Plan, PlanLimit)
    from billing.models import PlanPrice

    for code, cents, order in (("starter", 2000, 1), ("pro", 9000, 2)):
        PlanPrice.objects.update_or_create(
            plan_id=code,
            defaults={
                "lookup_key": f"agentpost_{code}_monthly",
                "unit_amount_cents": cents,
                "sort_order": order,
            },
        )
    call_command("billing_sync_plans", stdout=open(os.devnull, "w"))
    yield server
    server.stop()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(page, live_server, email="owner@acme.test", password="pw-owner-1"):
    page.goto(f"{live_server.url}/console/login/")
    page.fill("#id_username", email)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/console/usage/")


def test_an_owner_logs_in_and_sees_usage_update(page, live_server, org, inbox):
    from django.utils import timezone

    from agentpost import metering

    log_in(page, live_server)
    meter = page.get_by_test_id("meter-messages_sent")
    assert meter.locator(".current").inner_text() == "0"
    shot(page, "usage")

    # The dashboard refreshes by itself.
    metering.charge(
        org_id=org.id, counter=metering.MESSAGES_SENT, now=timezone.now(), amount=3
    )
    page.wait_for_function(
        "document.querySelector('[data-counter=messages_sent] .current')"
        ".textContent === '3'",
        timeout=12_000,
    )


def test_an_owner_compares_plans_and_upgrades_through_checkout(
    page, live_server, org, standin
):
    log_in(page, live_server)
    page.click("text=Billing")
    plans = page.get_by_test_id("plans")
    assert "Starter" in plans.inner_text() and "Pro" in plans.inner_text()
    assert "$20.00/month" in plans.inner_text()
    shot(page, "billing-free")

    page.locator("tr", has_text="Starter").get_by_role("button", name="Upgrade").click()
    page.wait_for_selector("#pay")  # the stand-in's checkout page
    shot(page, "checkout")
    page.click("#pay")
    page.wait_for_url(f"{live_server.url}/console/billing/?checkout=success")
    assert page.get_by_test_id("current-plan").inner_text() == "Starter"
    assert page.get_by_test_id("subscription-status").inner_text() == "active"
    org.refresh_from_db()
    assert org.plan == "starter"

    # Then to Pro, seeing the prorated price before confirming.
    page.locator("tr", has_text="Pro").get_by_role("link", name="Upgrade").click()
    proration = page.get_by_test_id("proration").inner_text()
    assert "You pay $" in proration and "now for the rest of this period" in proration
    shot(page, "change-plan")
    page.click("text=Confirm change")
    page.wait_for_url(f"{live_server.url}/console/billing/")
    assert page.get_by_test_id("current-plan").inner_text() == "Pro"
    shot(page, "billing-pro")


def test_invoices_page_through(page, live_server, org, standin):
    from billing.models import OrgSubscription

    log_in(page, live_server)
    page.goto(f"{live_server.url}/console/billing/")
    page.locator("tr", has_text="Starter").get_by_role("button", name="Upgrade").click()
    page.click("#pay")
    page.wait_for_url(f"{live_server.url}/console/billing/?checkout=success")
    sub_id = OrgSubscription.objects.get(org=org).stripe_subscription_id
    for _ in range(11):  # eleven renewals and the first invoice: two pages
        control(standin, f"subscriptions/{sub_id}/renew")

    page.goto(f"{live_server.url}/console/billing/")
    rows = page.get_by_test_id("invoices").locator("tbody tr")
    assert rows.count() == 10
    assert "Page 1 of 2" in page.inner_text(".pager")
    shot(page, "invoices")
    page.click("text=Older →")
    assert page.get_by_test_id("invoices").locator("tbody tr").count() == 2
    assert "Page 2 of 2" in page.inner_text(".pager")


def test_a_past_due_org_sees_the_dunning_banner(page, live_server, org):
    from django.utils import timezone

    deadline = timezone.now() + timezone.timedelta(days=4)
    Organization.objects.filter(pk=org.pk).update(
        billing_state="past_due", grace_deadline=deadline
    )
    DunningCase.objects.create(
        org=org,
        invoice_id="in_test",
        first_failed_at=timezone.now(),
        grace_deadline=deadline,
        hosted_invoice_url="https://invoice.stripe.test/i/in_test",
    )
    log_in(page, live_server)
    banner = page.get_by_test_id("dunning-banner")
    assert "Your last payment failed." in banner.inner_text()
    assert banner.get_by_role("link", name="Pay the invoice").get_attribute("href") == (
        "https://invoice.stripe.test/i/in_test"
    )
    page.click("text=API keys")
    assert page.get_by_test_id("dunning-banner").is_visible()
    shot(page, "dunning-banner")


def test_an_owner_changes_the_retention_policy(page, live_server, org):
    from retention.models import RetentionPolicy

    log_in(page, live_server)
    page.click("text=Retention")
    assert "kept forever" in page.get_by_test_id("current-policy").inner_text()
    page.fill("#retention-days", "90")
    page.click("text=Preview")
    preview = page.get_by_test_id("policy-preview").inner_text()
    assert "With 90 days, nothing is deleted before" in preview
    shot(page, "retention-preview")
    page.click("text=Save this policy")
    assert "kept for 90 days" in page.get_by_test_id("current-policy").inner_text()
    assert RetentionPolicy.objects.get(org=org).retention_days == 90
    shot(page, "retention")


def test_the_console_fits_a_phone(browser, live_server, org, settings):
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True
    )
    page = context.new_page()
    log_in(page, live_server)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the usage page scrolls sideways ({width}px)"
    shot(page, "usage-phone")
    context.close()

"""The console: server-rendered pages for org members (owners change, members look)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST
from djstripe import models as dj

from agentpost.orgs.models import ApiKey, Membership
from agentpost.orgs.services import create_api_key, revoke_api_key
from billing import services as billing
from billing import stripe_api
from billing.api import subscription_body
from billing.models import OrgSubscription, PlanPrice
from console.access import SESSION_KEY, member_required, owner_required

INVOICES_PER_PAGE = 10


@login_required
def home(request):
    return redirect("console:usage")


@login_required
def no_org(request):
    return render(request, "console/no_org.html")


@login_required
@require_POST
def switch_org(request):
    org_id = request.POST.get("org_id", "")
    if Membership.objects.filter(user=request.user, org_id=org_id).exists():
        request.session[SESSION_KEY] = org_id
    next_url = request.POST.get("next", "")
    return redirect(next_url if next_url.startswith("/console/") else "console:home")


# Billing


def _billing_error(request, error) -> None:
    if isinstance(error, billing.BillingConflict | stripe_api.BillingProviderError):
        messages.error(request, error.message)
    else:
        raise error


@member_required
def billing_page(request):
    org = request.console.org
    if not settings.BILLING_ENABLED:
        return render(request, "console/billing_disabled.html")
    account = OrgSubscription.objects.filter(org=org).first()
    invoices = (
        dj.Invoice.objects.filter(customer__id=account.stripe_customer_id).order_by(
            "-created"
        )
        if account
        else dj.Invoice.objects.none()
    )
    page = Paginator(invoices, INVOICES_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "console/billing.html",
        {
            "subscription": subscription_body(org),
            "account": account,
            "plans": plan_table(current=org.plan),
            "invoices": page,
        },
    )


def plan_table(*, current: str) -> list[dict]:
    """The plans side by side: price, limits, and what choosing each one means."""
    from usage.plans import plan_rows

    prices = {p.plan_code: p for p in PlanPrice.objects.all()}
    current_price = prices.get(current)
    rows = []
    for row in plan_rows():
        price = prices.get(row["code"])
        row["price"] = price
        row["is_current"] = row["code"] == current
        if price and not row["is_current"]:
            cheaper = (
                current_price
                and price.unit_amount_cents < current_price.unit_amount_cents
            )
            row["action"] = "downgrade" if cheaper else "upgrade"
        rows.append(row)
    return rows


@owner_required
@require_POST
def billing_checkout(request):
    try:
        url = billing.start_checkout(
            org=request.console.org,
            plan_code=request.POST.get("plan", ""),
            success_url=f"{settings.SITE_URL}/console/billing/?checkout=success",
            cancel_url=f"{settings.SITE_URL}/console/billing/?checkout=canceled",
            client_key=None,
        )
    except Exception as error:
        _billing_error(request, error)
        return redirect("console:billing")
    return HttpResponseRedirect(url)


@owner_required
def billing_change(request):
    """Show what a plan change costs now, then apply it at the same proration date."""
    org = request.console.org
    plan = request.POST.get("plan") or request.GET.get("plan", "")
    try:
        if request.method == "POST":
            change = billing.change_plan(
                org=org,
                plan_code=plan,
                preview=False,
                proration_date=int(request.POST.get("proration_date") or 0) or None,
                now=timezone.now(),
                actor=request.user,
                client_key=request.POST.get("nonce"),
            )
            messages.success(request, f"Your plan is now {change.plan_code}.")
            return redirect("console:billing")
        change = billing.change_plan(
            org=org,
            plan_code=plan,
            preview=True,
            now=timezone.now(),
            actor=request.user,
            client_key=None,
        )
    except Exception as error:
        _billing_error(request, error)
        return redirect("console:billing")
    return render(
        request,
        "console/billing_change.html",
        {
            "change": change,
            "price": PlanPrice.objects.filter(plan_code=plan).first(),
            "subscription": subscription_body(org),
            "nonce": timezone.now().timestamp(),
        },
    )


@owner_required
@require_POST
def billing_cancel(request):
    try:
        billing.cancel_subscription(
            org=request.console.org,
            at_period_end=request.POST.get("when") != "now",
            now=timezone.now(),
            actor=request.user,
            client_key=None,
        )
        messages.success(request, "Your subscription is cancelled.")
    except Exception as error:
        _billing_error(request, error)
    return redirect("console:billing")


@owner_required
@require_POST
def billing_resume(request):
    try:
        billing.resume_subscription(
            org=request.console.org,
            now=timezone.now(),
            actor=request.user,
            client_key=None,
        )
        messages.success(request, "Your subscription will renew as usual.")
    except Exception as error:
        _billing_error(request, error)
    return redirect("console:billing")


@owner_required
@require_POST
def billing_portal(request):
    try:
        url = billing.portal_url(
            org=request.console.org, return_url=f"{settings.SITE_URL}/console/billing/"
        )
    except Exception as error:
        _billing_error(request, error)
        return redirect("console:billing")
    return HttpResponseRedirect(url)


# API keys


@member_required
def keys_page(request):
    keys = ApiKey.objects.filter(org=request.console.org).order_by("-created_at")
    new_token = request.session.pop("console_new_key", None)
    return render(request, "console/keys.html", {"keys": keys, "new_token": new_token})


@owner_required
@require_POST
def keys_create(request):
    name = request.POST.get("name", "").strip()[:100]
    new = create_api_key(org=request.console.org, name=name, created_by=request.user)
    # Shown once, on the next page view, then gone from the session.
    request.session["console_new_key"] = new.token
    return redirect("console:keys")


@owner_required
@require_POST
def keys_revoke(request, key_id: str):
    key = get_object_or_404(ApiKey, pk=key_id, org=request.console.org)
    if revoke_api_key(key=key, now=timezone.now(), actor=request.user):
        messages.success(request, f"Key {key.prefix}… is revoked.")
    return redirect("console:keys")

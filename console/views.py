"""The console: server-rendered pages for org members (owners change, members look)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpResponseRedirect, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST
from djstripe import models as dj

from agentpost.events import services as events
from agentpost.events import targets
from agentpost.events.models import Delivery, WebhookEndpoint
from agentpost.events.services import ALL_EVENT_TYPES, EVENT_TYPES
from agentpost.orgs.models import ApiKey, Membership
from agentpost.orgs.services import create_api_key, revoke_api_key
from billing import services as billing
from billing import stripe_api
from billing.api import plan_name, subscription_body
from billing.models import OrgSubscription, PlanPrice
from console.access import (
    SESSION_KEY,
    active_owner_required,
    member_required,
    owner_required,
)
from console.charts import bar_chart
from console.summaries import COUNTER_LABELS
from console.templatetags.humanize_bytes import format_bytes
from retention import services as retention
from retention.export import export_filename, stream_export
from retention.models import RetentionRun
from usage.limits import SELFHOSTED_PLAN, get_limits
from usage.models import Plan
from usage.services import get_usage, get_usage_history

INVOICES_PER_PAGE = 10
RECENT_DELIVERIES = 25


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
        return render(request, "console/billing_disabled.html", {"section": "billing"})
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
            "section": "billing",
            "subscription": subscription_body(org),
            "account": account,
            "plans": plan_table(current=org.plan),
            "invoices": page,
        },
    )


def plan_table(*, current: str) -> list[dict]:
    """The plans side by side: price, limits, and what choosing each one means."""
    prices = {p.plan_id: p for p in PlanPrice.objects.all()}
    current_price = prices.get(current)
    plans = Plan.objects.exclude(code=SELFHOSTED_PLAN).prefetch_related("limits")
    rows = []
    for plan in sorted(plans, key=lambda p: _monthly_cents(prices.get(p.code))):
        price = prices.get(plan.code)
        limits = {limit.counter: limit for limit in plan.limits.all()}
        row = {
            "code": plan.code,
            "name": plan.name,
            "price": price,
            "is_current": plan.code == current,
            "action": None,
            "limits": [
                _limit_cell(counter, label, limits.get(counter))
                for counter, label in COUNTER_LABELS.items()
            ],
        }
        if price and not row["is_current"]:
            cheaper = (
                current_price
                and price.unit_amount_cents < current_price.unit_amount_cents
            )
            row["action"] = "downgrade" if cheaper else "upgrade"
        rows.append(row)
    return rows


def _monthly_cents(price) -> int:
    return price.unit_amount_cents if price else 0


def _limit_cell(counter: str, label: str, limit) -> dict:
    if limit is None or limit.limit is None:
        return {"label": label, "display": "Unlimited", "mode": ""}
    shown = (
        format_bytes(limit.limit) if counter == "storage_bytes" else f"{limit.limit:,}"
    )
    return {"label": label, "display": shown, "mode": limit.mode}


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
            messages.success(
                request, f"Your plan is now {plan_name(change.plan_code)}."
            )
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
            "section": "billing",
            "change": change,
            "price": PlanPrice.objects.filter(plan_id=plan).first(),
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
    return render(
        request,
        "console/keys.html",
        {"section": "keys", "keys": keys, "new_token": new_token},
    )


@active_owner_required
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


# Retention


@member_required
def retention_page(request):
    org = request.console.org
    now = timezone.now()
    policy = retention.get_policy(org=org)
    current_days = policy.retention_days if policy else None
    proposed = None
    error = ""
    if request.method == "POST":
        if not request.console.is_owner:
            raise PermissionDenied("Only the org's owners can change this.")
        raw = request.POST.get("retention_days", "").strip()
        try:
            days = int(raw) if raw else None
            if days is not None and not 1 <= days <= settings.RETENTION_MAX_DAYS:
                raise ValueError
        except ValueError:
            error = (
                "Enter a whole number of days from 1 to "
                f"{settings.RETENTION_MAX_DAYS}, or leave it empty to keep everything."
            )
        else:
            if request.POST.get("confirm") == "yes":
                retention.set_policy(
                    org=org, retention_days=days, now=now, actor=request.user
                )
                messages.success(
                    request,
                    "Messages are now kept forever."
                    if days is None
                    else f"Messages are now kept for {days} days.",
                )
                return redirect("console:retention")
            proposed = {
                "days": days,
                "preview": retention.preview_policy(
                    org=org, retention_days=days, now=now
                ),
            }
    return render(
        request,
        "console/retention.html",
        {
            "section": "retention",
            "current_days": current_days,
            "next_deletion": retention.deletion_preview(org=org, now=now),
            "proposed": proposed,
            "error": error,
            "notice_days": settings.RETENTION_NOTICE_DAYS,
            "max_days": settings.RETENTION_MAX_DAYS,
            "receipts": RetentionRun.objects.filter(org=org).order_by("-started_at")[
                :20
            ],
        },
    )


@owner_required
def retention_export(request):
    org = request.console.org
    now = timezone.now()
    response = StreamingHttpResponse(
        stream_export(org_id=org.id, now=now), content_type="application/zip"
    )
    name = export_filename(org_id=org.id, now=now)
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "no-store"
    return response


# Webhooks


@member_required
def webhooks_page(request):
    org = request.console.org
    endpoints = WebhookEndpoint.objects.filter(org=org).order_by("created_at")
    deliveries = (
        Delivery.objects.filter(org=org)
        .select_related("endpoint", "event")
        .order_by("-created_at")[:RECENT_DELIVERIES]
    )
    return render(
        request,
        "console/webhooks.html",
        {
            "section": "webhooks",
            "endpoints": endpoints,
            "deliveries": deliveries,
            "event_types": sorted(EVENT_TYPES),
            "new_secret": request.session.pop("console_new_webhook_secret", None),
        },
    )


@active_owner_required
@require_POST
def webhooks_create(request):
    chosen = request.POST.getlist("event_types") or [ALL_EVENT_TYPES]
    unknown = [t for t in chosen if t != ALL_EVENT_TYPES and t not in EVENT_TYPES]
    if unknown:
        messages.error(request, "Unknown event type.")
        return redirect("console:webhooks")
    try:
        new = events.create_endpoint(
            org=request.console.org,
            url=request.POST.get("url", "").strip(),
            event_types=chosen,
            description=request.POST.get("description", "").strip()[:500],
            enabled=True,
            now=timezone.now(),
            actor=request.user,
        )
    except targets.UnsafeTarget as error:
        messages.error(request, f"That URL cannot be used: {error}")
        return redirect("console:webhooks")
    except events.EndpointLimitReached:
        messages.error(request, "This org has reached its number of endpoints.")
        return redirect("console:webhooks")
    request.session["console_new_webhook_secret"] = {
        "endpoint": new.endpoint.id,
        "secret": new.secret,
    }
    return redirect("console:webhooks")


@active_owner_required
@require_POST
def webhooks_delete(request, endpoint_id: str):
    endpoint = get_object_or_404(
        WebhookEndpoint, pk=endpoint_id, org=request.console.org
    )
    events.delete_endpoint(endpoint=endpoint, now=timezone.now(), actor=request.user)
    messages.success(request, "The endpoint is deleted.")
    return redirect("console:webhooks")


@active_owner_required
@require_POST
def webhooks_replay(request, delivery_id: str):
    delivery = get_object_or_404(Delivery, pk=delivery_id, org=request.console.org)
    try:
        events.replay_delivery(delivery=delivery, now=timezone.now())
    except events.EndpointDisabled:
        messages.error(request, "The endpoint is disabled; enable it to replay.")
    else:
        messages.success(request, "The delivery is queued again.")
    return redirect("console:webhooks")


# Usage

HISTORY_DAYS = 30


def usage_meters(org, usage: dict) -> list[dict]:
    """The five counters as the dashboard shows them: value, limit, bar, colour."""
    limits = get_limits(org=org)
    meters = []
    for counter, label in COUNTER_LABELS.items():
        row = usage[counter]
        limit = limits[counter]
        percentage = row["percentage"]
        state = "ok"
        if percentage is not None and limit.limit is not None:
            if percentage >= 100:
                state = "over"
            elif percentage >= limit.warning_threshold:
                state = "warn"
        meters.append(
            {
                "counter": counter,
                "label": label,
                "current": row["current"],
                "limit": row["limit"],
                "percentage": percentage,
                "bar": min(percentage or 0, 100),
                "mode": limit.mode if limit.limit is not None else None,
                "threshold": limit.warning_threshold
                if limit.limit is not None
                else None,
                "state": state,
                "is_bytes": counter == "storage_bytes",
            }
        )
    return meters


@member_required
def usage_page(request):
    org = request.console.org
    now = timezone.now()
    usage = get_usage(org=org, now=now)
    meters = usage_meters(org, usage)
    history = get_usage_history(org=org, days=HISTORY_DAYS, now=now)
    charts = [
        {
            "label": meter["label"],
            "svg": bar_chart(
                values=history["counters"][meter["counter"]],
                days=history["days"],
                title=f"{meter['label']}, last {HISTORY_DAYS} days",
            ),
        }
        for meter in meters
    ]
    return render(
        request,
        "console/usage.html",
        {
            "section": "usage",
            "meters": meters,
            "charts": charts,
            "period": usage["period"],
            "weekly_summary": request.console.membership.weekly_summary,
        },
    )


@member_required
def usage_json(request):
    """The meters as JSON, for the dashboard's refresh every few seconds."""
    org = request.console.org
    usage = get_usage(org=org, now=timezone.now())
    return JsonResponse({"meters": usage_meters(org, usage)})


@owner_required
@require_POST
def weekly_summary_toggle(request):
    membership = request.console.membership
    membership.weekly_summary = request.POST.get("weekly_summary") == "on"
    membership.save(update_fields=["weekly_summary"])
    messages.success(
        request,
        "You will get the weekly usage email."
        if membership.weekly_summary
        else "You will no longer get the weekly usage email.",
    )
    return redirect("console:usage")

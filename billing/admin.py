from django import forms
from django.contrib import admin, messages
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from agentpost.metering import COUNTERS
from agentpost.orgs.admin import OrganizationAdmin
from agentpost.orgs.models import Organization
from billing import dunning, webhooks
from billing.models import (
    DunningCase,
    OrgSubscription,
    PaymentGrant,
    PlanPrice,
    StripeEvent,
)
from usage.models import LimitOverride
from usage.services import get_usage


@admin.register(PlanPrice)
class PlanPriceAdmin(admin.ModelAdmin):
    list_display = [
        "plan",
        "unit_amount_cents",
        "interval",
        "lookup_key",
        "stripe_price_id",
        "grace_period_days",
    ]
    readonly_fields = ["stripe_product_id", "stripe_price_id"]


@admin.register(StripeEvent)
class StripeEventAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "type",
        "status",
        "org",
        "api_version",
        "received_at",
        "attempts",
    ]
    list_filter = ["status", "type", "api_version"]
    search_fields = ["id", "org__id", "detail"]
    readonly_fields = [f.name for f in StripeEvent._meta.fields]
    actions = ["replay"]

    @admin.action(description="Replay the selected events")
    def replay(self, request, queryset):
        results = [webhooks.replay_event(event_id=e.pk) for e in queryset]
        self.message_user(
            request,
            f"Replayed {len(results)} events: "
            + ", ".join(f"{s}={results.count(s)}" for s in sorted(set(results))),
        )

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(OrgSubscription)
class OrgSubscriptionAdmin(admin.ModelAdmin):
    list_display = [
        "org",
        "plan_code",
        "status",
        "cancel_at_period_end",
        "current_period_end",
        "grace_period_days",
    ]
    list_filter = ["status", "plan_code"]
    search_fields = [
        "org__id",
        "org__name",
        "stripe_customer_id",
        "stripe_subscription_id",
    ]
    readonly_fields = [
        "org",
        "stripe_customer_id",
        "stripe_subscription_id",
        "status",
        "plan_code",
        "stripe_price_id",
        "cancel_at_period_end",
        "current_period_start",
        "current_period_end",
    ]


@admin.register(DunningCase)
class DunningCaseAdmin(admin.ModelAdmin):
    list_display = [
        "invoice_id",
        "org",
        "first_failed_at",
        "grace_deadline",
        "final",
        "reminder_sent_at",
        "suspended_at",
        "resolved_at",
    ]
    list_filter = ["final"]
    search_fields = ["invoice_id", "org__id", "org__name"]
    readonly_fields = [f.name for f in DunningCase._meta.fields]


@admin.register(PaymentGrant)
class PaymentGrantAdmin(admin.ModelAdmin):
    list_display = ["invoice_id", "org", "amount_paid_cents", "granted_at"]
    search_fields = ["invoice_id", "org__id"]
    readonly_fields = [f.name for f in PaymentGrant._meta.fields]


class StaffActionForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Kept in the org's audit log.",
    )
    days = forms.IntegerField(
        min_value=1,
        max_value=90,
        required=False,
        help_text="Only for extending the grace period.",
    )


class BillingOrganizationAdmin(OrganizationAdmin):
    """The org page, with the staff's billing actions: each asks why, and is audited."""

    change_form_template = "admin/billing/organization_change_form.html"
    readonly_fields = [
        *OrganizationAdmin.readonly_fields,
        "usage_against_limits",
        "stripe_events",
    ]

    @admin.display(description="Usage this period")
    def usage_against_limits(self, org):
        """The five counters against the limits in force, and where each comes from."""
        if org is None or not org.pk:
            return "–"
        usage = get_usage(org=org, now=timezone.now())
        overrides = {o.counter: o for o in LimitOverride.objects.filter(org=org)}
        rows = [
            format_html(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                counter,
                f"{usage[counter]['current']:,}",
                "no limit"
                if usage[counter]["limit"] is None
                else f"{usage[counter]['limit']:,} ({usage[counter]['mode']})",
                "–"
                if usage[counter]["percentage"] is None
                else f"{usage[counter]['percentage']}%",
                (
                    "override (staff)"
                    if overrides[counter].set_by_staff
                    else "override (org)"
                )
                if counter in overrides
                else f"plan {org.effective_plan}",
            )
            for counter in COUNTERS
        ]
        return format_html(
            "<table><tr><th>counter</th><th>used</th><th>limit</th><th>%</th>"
            "<th>from</th></tr>{}</table><p>Period {} to {}. Edit overrides under "
            "Usage › Limit overrides.</p>",
            format_html_join("", "{}", ((row,) for row in rows)),
            usage["period"]["start"][:10],
            usage["period"]["end"][:10],
        )

    @admin.display(description="Stripe events")
    def stripe_events(self, org):
        if org is None or not org.pk:
            return "–"
        failed = StripeEvent.objects.filter(org=org, status=StripeEvent.Status.FAILED)
        url = reverse("admin:billing_stripeevent_changelist")
        return format_html(
            '<a href="{}?q={}">All events of this org</a> · {} failed '
            '(<a href="{}?q={}&status__exact=failed">replay from the list</a>)',
            url,
            org.pk,
            failed.count(),
            url,
            org.pk,
        )

    staff_actions = {
        "suspend": ("Suspend", dunning.staff_suspend),
        "reinstate": ("Reinstate", dunning.staff_reinstate),
        "extend-grace": ("Extend grace period", dunning.staff_extend_grace),
    }

    def get_urls(self):
        return [
            path(
                "<str:object_id>/billing/<str:action>/",
                self.admin_site.admin_view(self.staff_action_view),
                name="orgs_organization_billing_action",
            ),
            *super().get_urls(),
        ]

    def staff_action_view(self, request, object_id: str, action: str):
        org = self.get_object(request, object_id)
        if (
            org is None
            or action not in self.staff_actions
            or not self.has_change_permission(request, org)
        ):
            return redirect("admin:orgs_organization_changelist")
        title, function = self.staff_actions[action]
        form = StaffActionForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            kwargs = {
                "org": org,
                "actor": request.user,
                "now": timezone.now(),
                "reason": form.cleaned_data["reason"],
            }
            if action == "extend-grace":
                kwargs["days"] = form.cleaned_data["days"] or 7
            try:
                function(**kwargs)
            except ValueError as error:
                messages.error(request, str(error))
            else:
                messages.success(request, f"{title}: done for {org.name}.")
            return redirect(reverse("admin:orgs_organization_change", args=[org.pk]))
        return render(
            request,
            "admin/billing/staff_action.html",
            {
                **self.admin_site.each_context(request),
                "org": org,
                "form": form,
                "title": f"{title}: {org.name}",
                "action": action,
                "opts": self.model._meta,
            },
        )


admin.site.unregister(Organization)
admin.site.register(Organization, BillingOrganizationAdmin)

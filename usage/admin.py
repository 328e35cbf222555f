from django import forms
from django.contrib import admin
from django.utils import timezone

from usage import services
from usage.models import (
    LimitOverride,
    LiveOutbox,
    Plan,
    PlanLimit,
    UsageAlert,
    UsageCounter,
)


class PlanLimitInline(admin.TabularInline):
    model = PlanLimit
    extra = 0


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ["code", "name"]
    inlines = [PlanLimitInline]

    def get_readonly_fields(self, request, obj=None):
        # Orgs refer to a plan by its code, so it is fixed once made.
        return ["code"] if obj else []


class LimitOverrideForm(forms.ModelForm):
    class Meta:
        model = LimitOverride
        fields = ["org", "counter", "limit", "mode", "warning_threshold"]

    def clean(self):
        data = super().clean()
        if all(
            data.get(f) in (None, "") for f in ("limit", "mode", "warning_threshold")
        ):
            raise forms.ValidationError(
                "Set a limit, mode or warning threshold; to return to the plan's "
                "values, delete the override."
            )
        return data


@admin.register(LimitOverride)
class LimitOverrideAdmin(admin.ModelAdmin):
    """Staff may set any value here, unlike orgs through the settings API."""

    form = LimitOverrideForm
    list_display = [
        "org",
        "counter",
        "limit",
        "mode",
        "warning_threshold",
        "updated_at",
    ]
    list_filter = ["counter", "mode"]
    search_fields = ["org__id", "org__name"]
    raw_id_fields = ["org"]

    def get_readonly_fields(self, request, obj=None):
        return ["org", "counter", "updated_at"] if obj else ["updated_at"]

    def save_model(self, request, obj, form, change):
        # Through the service, so the change is audited and alerts re-checked.
        services.update_limit_overrides(
            org=obj.org,
            changes={
                obj.counter: {
                    "limit": obj.limit,
                    "mode": obj.mode or None,
                    "warning_threshold": obj.warning_threshold,
                }
            },
            now=timezone.now(),
            actor=request.user,
            by_staff=True,
        )
        obj.pk = LimitOverride.objects.get(org=obj.org, counter=obj.counter).pk

    def delete_model(self, request, obj):
        services.update_limit_overrides(
            org=obj.org,
            changes={obj.counter: None},
            now=timezone.now(),
            actor=request.user,
            by_staff=True,
        )

    def delete_queryset(self, request, queryset):
        for obj in queryset.select_related("org"):
            self.delete_model(request, obj)


@admin.register(UsageAlert)
class UsageAlertAdmin(admin.ModelAdmin):
    list_display = ["created_at", "org", "counter", "kind", "current", "limit"]
    list_filter = ["kind", "counter"]
    search_fields = ["org__id", "org__name"]
    readonly_fields = [f.name for f in UsageAlert._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(UsageCounter)
class UsageCounterAdmin(admin.ModelAdmin):
    list_display = ["org", "counter", "period_start", "shard", "value"]
    list_filter = ["counter"]
    search_fields = ["org__id", "org__name"]
    readonly_fields = ["org", "counter", "period_start", "shard", "value"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(LiveOutbox)
class LiveOutboxAdmin(admin.ModelAdmin):
    """What Redis has still to be told; rows that stay mean Redis is away."""

    list_display = ["kind", "org_id", "counter", "period_start", "created_at"]
    list_filter = ["kind"]
    readonly_fields = [f.name for f in LiveOutbox._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

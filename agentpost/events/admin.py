from django.contrib import admin, messages
from django.utils import timezone

from agentpost.events import services
from agentpost.events.models import Delivery, DeliveryAttempt, Event, WebhookEndpoint


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["id", "org", "type", "created_at"]
    list_filter = ["type"]
    search_fields = ["id", "org__id", "org__name"]
    readonly_fields = ["id", "org", "type", "data", "created_at"]


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ["id", "org", "url", "enabled", "disabled_reason", "failing_since"]
    list_filter = ["enabled", "disabled_reason"]
    search_fields = ["id", "url", "org__id", "org__name"]
    # The secrets (encrypted or not) are never shown or editable here.
    fields = [
        "id",
        "org",
        "url",
        "description",
        "event_types",
        "enabled",
        "disabled_reason",
        "disabled_at",
        "failing_since",
        "previous_secret_expires_at",
        "created_at",
        "updated_at",
    ]
    # Staff may turn an endpoint off or on and edit its description; the URL and
    # types are the org's to change through the API, which checks them.
    readonly_fields = [
        "id",
        "org",
        "url",
        "event_types",
        "disabled_reason",
        "disabled_at",
        "failing_since",
        "previous_secret_expires_at",
        "created_at",
        "updated_at",
    ]

    def save_model(self, request, obj, form, change) -> None:
        # Through the service, so enabling resets the failure run and both
        # changes are audited.
        services.update_endpoint(
            endpoint=WebhookEndpoint.objects.get(pk=obj.pk),
            changes={f: form.cleaned_data[f] for f in form.changed_data},
            now=timezone.now(),
            actor=request.user,
        )

    def has_add_permission(self, request) -> bool:
        # An endpoint made here could show its secret to no one; orgs make them
        # through the API, which also checks the URL.
        return False


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    fields = [
        "number",
        "started_at",
        "finished_at",
        "succeeded",
        "status_code",
        "latency_ms",
        "error",
        "response_excerpt",
    ]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "org",
        "endpoint",
        "event_type",
        "status",
        "attempt_count",
        "last_status_code",
        "next_attempt_at",
        "created_at",
    ]
    list_filter = ["status"]
    search_fields = ["id", "org__id", "endpoint__id", "event__id"]
    list_select_related = ["org", "endpoint", "event"]
    readonly_fields = [f.name for f in Delivery._meta.fields]
    inlines = [DeliveryAttemptInline]
    actions = ["replay"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="event type")
    def event_type(self, delivery: Delivery) -> str:
        return delivery.event.type

    @admin.action(description="Replay the selected deliveries")
    def replay(self, request, queryset) -> None:
        now = timezone.now()
        replayed = skipped = 0
        for delivery in queryset.select_related("endpoint"):
            try:
                services.replay_delivery(delivery=delivery, now=now)
                replayed += 1
            except services.EndpointDisabled:
                skipped += 1
        self.message_user(request, f"Queued {replayed} replays.", messages.SUCCESS)
        if skipped:
            self.message_user(
                request,
                f"Skipped {skipped} whose endpoint is disabled.",
                messages.WARNING,
            )

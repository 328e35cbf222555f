from datetime import timedelta

from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiCallback,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers
from rest_framework.response import Response

from agentpost.api import ApiError, OrgAPIView, StrictSerializer, paginate
from agentpost.events import services, targets
from agentpost.events.models import Delivery, DeliveryAttempt, WebhookEndpoint

EVENT_TYPE_CHOICES = [services.ALL_EVENT_TYPES, *services.EVENT_TYPES]
EVENT_TYPES_HELP = (
    'The event types to deliver; ["*"] (the default) means all, including types '
    "added later. One of: " + ", ".join(services.EVENT_TYPES) + "."
)


class WebhookIn(StrictSerializer):
    url = serializers.CharField(
        max_length=targets.URL_MAX_LENGTH,
        help_text="An https:// (or http://) URL on a public address.",
    )
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_TYPE_CHOICES),
        min_length=1,
        max_length=len(EVENT_TYPE_CHOICES),
        default=[services.ALL_EVENT_TYPES],
        help_text=EVENT_TYPES_HELP,
    )
    description = serializers.CharField(max_length=500, allow_blank=True, default="")
    enabled = serializers.BooleanField(default=True)

    def validate_url(self, value: str) -> str:
        try:
            targets.parse_url(value)
        except targets.UnsafeTarget as exc:
            raise serializers.ValidationError(str(exc)) from None
        return value

    def validate_event_types(self, value: list[str]) -> list[str]:
        if services.ALL_EVENT_TYPES in value:
            return [services.ALL_EVENT_TYPES]
        return sorted(set(value))


class WebhookOut(serializers.ModelSerializer):
    event_types = serializers.ListField(
        child=serializers.CharField(), help_text=EVENT_TYPES_HELP
    )
    disabled_reason = serializers.SerializerMethodField(
        help_text="null while enabled; by_user, or failing when every attempt "
        "failed for days (owners are emailed)."
    )

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "url",
            "description",
            "event_types",
            "enabled",
            "disabled_reason",
            "disabled_at",
            "previous_secret_expires_at",
            "created_at",
            "updated_at",
        ]

    def get_disabled_reason(self, endpoint) -> str | None:
        return endpoint.disabled_reason or None


class WebhookCreatedOut(WebhookOut):
    secret = serializers.SerializerMethodField(
        help_text="The signing secret (whsec_...). Shown only in this response."
    )

    class Meta(WebhookOut.Meta):
        fields = [*WebhookOut.Meta.fields, "secret"]

    def get_secret(self, endpoint) -> str:
        # Only the creation knows the secret in clear; the row holds it encrypted.
        return self.context["secret"]


class RotateSecretIn(StrictSerializer):
    grace_period_seconds = serializers.IntegerField(
        min_value=0,
        max_value=int(services.ROTATION_GRACE_MAX.total_seconds()),
        default=int(services.ROTATION_GRACE_PERIOD.total_seconds()),
        help_text="How long deliveries stay signed with the previous secret too.",
    )


class RotateSecretOut(serializers.Serializer):
    id = serializers.CharField()
    secret = serializers.CharField(help_text="The new secret, shown only here.")
    previous_secret_expires_at = serializers.DateTimeField(allow_null=True)


class WebhookEventPayload(serializers.Serializer):
    """The JSON body of every webhook request."""

    id = serializers.CharField(
        help_text="The event id (evt_...), also sent as the webhook-id header. "
        "The same event may arrive more than once: dedupe on it."
    )
    type = serializers.ChoiceField(
        choices=list(services.EVENT_TYPES),
        help_text="\n".join(f"- `{k}`: {v}" for k, v in services.EVENT_TYPES.items()),
    )
    created_at = serializers.DateTimeField(help_text="When it happened.")
    org_id = serializers.CharField()
    data = serializers.JSONField(help_text="Depends on the type; see type.")


class DeliveryAttemptOut(serializers.ModelSerializer):
    class Meta:
        model = DeliveryAttempt
        fields = [
            "number",
            "started_at",
            "finished_at",
            "succeeded",
            "status_code",
            "latency_ms",
            "response_excerpt",
            "error",
        ]


class DeliveryOut(serializers.ModelSerializer):
    endpoint_id = serializers.CharField()
    event_id = serializers.CharField()
    event_type = serializers.CharField(source="event.type")
    payload = serializers.SerializerMethodField()
    replay_of = serializers.CharField(source="replay_of_id", allow_null=True)
    attempts = DeliveryAttemptOut(many=True)

    class Meta:
        model = Delivery
        fields = [
            "id",
            "endpoint_id",
            "event_id",
            "event_type",
            "status",
            "attempt_count",
            "next_attempt_at",
            "last_attempt_at",
            "last_status_code",
            "last_error",
            "completed_at",
            "replay_of",
            "created_at",
            "attempts",
            "payload",
        ]

    @extend_schema_field(WebhookEventPayload)
    def get_payload(self, delivery) -> dict:
        return delivery.event.payload()


def _unsafe_url(exc: targets.UnsafeTarget) -> serializers.ValidationError:
    return serializers.ValidationError({"url": [str(exc)]})


DELIVERY_CALLBACK = OpenApiCallback(
    name="webhook",
    path="{$request.body#/url}",
    decorator={
        "post": extend_schema(
            summary="An event, POSTed to your endpoint",
            description=(
                "Signed per Standard Webhooks: headers webhook-id (the event id), "
                "webhook-timestamp (Unix seconds) and webhook-signature "
                "(space-separated v1,<base64 HMAC-SHA256 of id.timestamp.body>, "
                "one per active secret). Answer 2xx within 15 seconds; anything "
                "else, a redirect included, is retried for about a day."
            ),
            request=WebhookEventPayload,
            responses={200: OpenApiResponse(description="Received.")},
        )
    },
)


class WebhookListView(OrgAPIView):
    @extend_schema(responses=WebhookOut(many=True))
    def get(self, request):
        return paginate(
            request, WebhookEndpoint.objects.filter(org=self.org), WebhookOut
        )

    @extend_schema(
        request=WebhookIn,
        responses={201: WebhookCreatedOut},
        callbacks=[DELIVERY_CALLBACK],
    )
    def post(self, request):
        data = WebhookIn.validate_input(request.data)
        try:
            new = services.create_endpoint(
                org=self.org,
                url=data["url"],
                event_types=data["event_types"],
                description=data["description"],
                enabled=data["enabled"],
                now=timezone.now(),
                actor=request.auth,
            )
        except targets.UnsafeTarget as exc:
            raise _unsafe_url(exc) from None
        except services.EndpointLimitReached:
            raise ApiError(
                400,
                "invalid_request",
                f"An organization may have at most {services.MAX_ENDPOINTS_PER_ORG} "
                "webhook endpoints.",
            ) from None
        body = WebhookCreatedOut(new.endpoint, context={"secret": new.secret}).data
        return Response(body, status=201)


class WebhookView(OrgAPIView):
    def get_endpoint(self, webhook_id: str) -> WebhookEndpoint:
        return get_object_or_404(WebhookEndpoint, pk=webhook_id, org=self.org)

    @extend_schema(responses=WebhookOut)
    def get(self, request, webhook_id: str):
        return Response(WebhookOut(self.get_endpoint(webhook_id)).data)

    @extend_schema(request=WebhookIn, responses=WebhookOut)
    def patch(self, request, webhook_id: str):
        endpoint = self.get_endpoint(webhook_id)
        changes = WebhookIn.validate_input(request.data, partial=True)
        try:
            endpoint = services.update_endpoint(
                endpoint=endpoint,
                changes=dict(changes),
                now=timezone.now(),
                actor=request.auth,
            )
        except targets.UnsafeTarget as exc:
            raise _unsafe_url(exc) from None
        return Response(WebhookOut(endpoint).data)

    @extend_schema(responses={204: None})
    def delete(self, request, webhook_id: str):
        endpoint = self.get_endpoint(webhook_id)
        services.delete_endpoint(
            endpoint=endpoint, now=timezone.now(), actor=request.auth
        )
        return Response(status=204)


class WebhookRotateSecretView(WebhookView):
    http_method_names = ["post", "options"]

    @extend_schema(request=RotateSecretIn, responses=RotateSecretOut)
    def post(self, request, webhook_id: str):
        endpoint = self.get_endpoint(webhook_id)
        data = RotateSecretIn.validate_input(request.data or {})
        now = timezone.now()
        secret = services.rotate_secret(
            endpoint=endpoint,
            grace=timedelta(seconds=data["grace_period_seconds"]),
            now=now,
            actor=request.auth,
        )
        endpoint.refresh_from_db()
        return Response(
            RotateSecretOut(
                {
                    "id": endpoint.id,
                    "secret": secret,
                    "previous_secret_expires_at": endpoint.previous_secret_expires_at,
                }
            ).data
        )


class WebhookDeliveriesView(WebhookView):
    http_method_names = ["get", "options"]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "status",
                OpenApiTypes.STR,
                enum=Delivery.Status.values,
                description="Only deliveries in this state.",
            )
        ],
        responses=DeliveryOut(many=True),
    )
    def get(self, request, webhook_id: str):
        endpoint = self.get_endpoint(webhook_id)
        queryset = (
            Delivery.objects.filter(endpoint=endpoint)
            .select_related("event")
            .prefetch_related("attempts")
        )
        if status := request.query_params.get("status"):
            if status not in Delivery.Status.values:
                raise ApiError(
                    400,
                    "invalid_request",
                    "status must be one of " + ", ".join(Delivery.Status.values) + ".",
                )
            queryset = queryset.filter(status=status)
        return paginate(request, queryset, DeliveryOut)


class WebhookReplayView(WebhookView):
    http_method_names = ["post", "options"]

    @extend_schema(request=None, responses={202: DeliveryOut})
    def post(self, request, webhook_id: str, delivery_id: str):
        endpoint = self.get_endpoint(webhook_id)
        delivery = get_object_or_404(
            Delivery.objects.select_related("endpoint", "event"),
            pk=delivery_id,
            endpoint=endpoint,
        )
        try:
            replay = services.replay_delivery(delivery=delivery, now=timezone.now())
        except services.EndpointDisabled:
            raise ApiError(
                409,
                "conflict",
                "The endpoint is disabled; enable it before replaying deliveries.",
            ) from None
        return Response(DeliveryOut(replay).data, status=202)

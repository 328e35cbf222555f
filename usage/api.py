from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from agentpost import metering
from agentpost.api import ApiError, OrgAPIView, StrictSerializer
from usage import services
from usage.models import Mode

MAX_LIMIT = 10**15


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: no strings, floats or booleans."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class LimitIn(StrictSerializer):
    limit = StrictIntegerField(
        min_value=0, max_value=MAX_LIMIT, allow_null=True, required=False
    )
    mode = serializers.ChoiceField(
        choices=Mode.choices, allow_null=True, required=False
    )
    warning_threshold = StrictIntegerField(
        min_value=1,
        max_value=100,
        allow_null=True,
        required=False,
        help_text="Percent of the limit at which usage.warning fires.",
    )

    def validate(self, data):
        if not data:
            raise serializers.ValidationError(
                "Give limit, mode or warning_threshold (null returns to the plan's)."
            )
        return data


class LimitsIn(StrictSerializer):
    """Per counter: the fields to change, or null to drop all its overrides."""

    messages_sent = LimitIn(required=False, allow_null=True)
    messages_received = LimitIn(required=False, allow_null=True)
    storage_bytes = LimitIn(required=False, allow_null=True)
    api_calls = LimitIn(required=False, allow_null=True)
    webhook_deliveries = LimitIn(required=False, allow_null=True)


class SettingsIn(StrictSerializer):
    limits = LimitsIn()

    def validate_limits(self, value):
        if not value:
            raise serializers.ValidationError("Name at least one counter.")
        return value


class UsageView(OrgAPIView):
    allowed_when_suspended = True
    enforce_api_calls = False

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, org_id: str):
        self.check_org_id(org_id)
        return Response(services.get_usage(org=self.org, now=timezone.now()))


class UsageHistoryView(OrgAPIView):
    allowed_when_suspended = True
    enforce_api_calls = False

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, org_id: str):
        self.check_org_id(org_id)
        raw = request.query_params.get("days", str(services.HISTORY_DAYS_DEFAULT))
        if (
            not (raw.isascii() and raw.isdigit())
            or not 1 <= int(raw) <= services.HISTORY_DAYS_MAX
        ):
            raise ApiError(
                400,
                "invalid_request",
                f"days must be a whole number from 1 to {services.HISTORY_DAYS_MAX}.",
                fields={"days": ["Out of range."]},
            )
        return Response(
            services.get_usage_history(org=self.org, days=int(raw), now=timezone.now())
        )


class SettingsView(OrgAPIView):
    # An org that set its own api_calls limit too low must be able to undo it.
    enforce_api_calls = False

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, org_id: str):
        self.check_org_id(org_id)
        return Response(services.get_settings(org=self.org))

    @extend_schema(request=SettingsIn, responses=OpenApiTypes.OBJECT)
    def patch(self, request, org_id: str):
        self.check_org_id(org_id)
        data = SettingsIn.validate_input(request.data)
        changes = {
            counter: (dict(fields) if fields is not None else None)
            for counter, fields in data["limits"].items()
            if counter in metering.COUNTERS
        }
        try:
            services.check_own_override(org=self.org, changes=changes)
        except services.OverrideNotAllowed as exc:
            raise ApiError(
                400,
                "invalid_request",
                f"{exc.field}: {exc.message}",
                fields={exc.field: [exc.message]},
            ) from None
        services.update_limit_overrides(
            org=self.org, changes=changes, now=timezone.now(), actor=request.user
        )
        return Response(services.get_settings(org=self.org))

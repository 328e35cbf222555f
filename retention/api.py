from __future__ import annotations

from django.conf import settings
from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.response import Response

from agentpost.api import OrgAPIView, StrictSerializer
from agentpost.orgs.models import Organization
from retention import services
from retention.export import export_filename, stream_export
from retention.models import RetentionNotice, RetentionRun

RECENT = 10


@extend_schema_field({"type": "integer", "minimum": 1, "nullable": True})
class RetentionDaysField(serializers.Field):
    """A whole number of days, or null; refuses strings, floats and booleans."""

    default_error_messages = {
        "invalid": "Must be a whole number of days, or null to keep forever.",
        "min": "Must be at least 1 day.",
        "max": "Must be at most {max} days.",
    }

    def to_internal_value(self, data) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        if data < 1:
            self.fail("min")
        if data > settings.RETENTION_MAX_DAYS:
            self.fail("max", max=settings.RETENTION_MAX_DAYS)
        return data

    def to_representation(self, value):
        return value


class PolicyIn(StrictSerializer):
    retention_days = RetentionDaysField(allow_null=True)


class NoticeOut(serializers.ModelSerializer):
    class Meta:
        model = RetentionNotice
        fields = ["cutoff", "delete_after", "messages", "bytes", "sent_at"]


class ReceiptOut(serializers.ModelSerializer):
    class Meta:
        model = RetentionRun
        fields = [
            "id",
            "cutoff",
            "status",
            "messages",
            "attachments",
            "bytes",
            "started_at",
            "finished_at",
        ]


def policy_body(org: Organization, now) -> dict:
    policy = services.get_policy(org=org)
    preview = services.deletion_preview(org=org, now=now)
    notices = services.active_notices(org.id).filter(sent_at__isnull=False)
    return {
        "retention_days": policy.retention_days if policy else None,
        "max_retention_days": settings.RETENTION_MAX_DAYS,
        "notice_days": settings.RETENTION_NOTICE_DAYS,
        "updated_at": policy.updated_at if policy else None,
        "next_deletion": preview
        and {
            "earliest_at": preview.begins_at,
            "cutoff": preview.cutoff,
            "messages": preview.messages,
            "bytes": preview.bytes,
        },
        "warnings": NoticeOut(notices.order_by("-created_at")[:RECENT], many=True).data,
        "receipts": ReceiptOut(
            RetentionRun.objects.filter(org=org).order_by("-started_at")[:RECENT],
            many=True,
        ).data,
    }


class RetentionPolicyView(OrgAPIView):
    # A suspended org keeps its data and may still read, loosen or tighten its
    # policy; deletion itself pauses while it is suspended.
    allowed_when_suspended = True

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, org_id: str):
        self.check_org_id(org_id)
        return Response(policy_body(self.org, timezone.now()))

    @extend_schema(request=PolicyIn, responses=OpenApiTypes.OBJECT)
    def put(self, request, org_id: str):
        self.check_org_id(org_id)
        data = PolicyIn.validate_input(request.data)
        now = timezone.now()
        services.set_policy(
            org=self.org,
            retention_days=data["retention_days"],
            now=now,
            actor=request.auth,
        )
        return Response(policy_body(self.org, now))


class ExportView(OrgAPIView):
    allowed_when_suspended = True

    @extend_schema(responses={(200, "application/zip"): OpenApiTypes.BINARY})
    def get(self, request, org_id: str):
        self.check_org_id(org_id)
        now = timezone.now()
        response = StreamingHttpResponse(
            stream_export(org_id=self.org.id, now=now), content_type="application/zip"
        )
        name = export_filename(org_id=self.org.id, now=now)
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        response["Cache-Control"] = "no-store"
        return response

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from agentpost.api import OrgAPIView
from agentpost.orgs.models import Organization


class OrganizationOut(serializers.ModelSerializer):
    plan = serializers.CharField(source="effective_plan")

    class Meta:
        model = Organization
        fields = [
            "id",
            "name",
            "plan",
            "billing_state",
            "grace_deadline",
            "current_period_start",
            "current_period_end",
            "created_at",
        ]


class OrganizationView(OrgAPIView):
    @extend_schema(responses=OrganizationOut)
    def get(self, request, org_id: str):
        self.check_org_id(org_id)
        return Response(OrganizationOut(self.org).data)

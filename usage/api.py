from django.utils import timezone
from rest_framework.response import Response

from agentpost.api import OrgAPIView
from usage.services import get_usage


class UsageView(OrgAPIView):
    allowed_when_suspended = True

    def get(self, request, org_id: str):
        self.check_org_id(org_id)
        return Response(get_usage(org=self.org, now=timezone.now()))

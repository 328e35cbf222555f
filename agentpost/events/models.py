from django.db import models

from agentpost.ids import PrefixedIdField
from agentpost.orgs.models import Organization


class Event(models.Model):
    """Something that happened in an org, recorded once (``evt_...``).

    Webhook deliveries fan out from here; the payload is what receivers get.
    """

    id = PrefixedIdField("evt")
    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="events"
    )
    type = models.CharField(max_length=100)
    data = models.JSONField()
    created_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["org", "type", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.id} {self.type}"

    def payload(self) -> dict:
        return {
            "id": self.id,
            "type": self.type,
            "created_at": self.created_at.isoformat(),
            "org_id": self.org_id,
            "data": self.data,
        }

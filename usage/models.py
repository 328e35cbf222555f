from django.db import models

from agentpost.metering import COUNTERS
from agentpost.orgs.models import Organization


class UsageCounter(models.Model):
    """One org's count of one counter in one period.

    ``storage_bytes`` is a level, not a count: it lives in a single row whose
    period_start is LEVEL_PERIOD_START and never resets.
    """

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    counter = models.CharField(max_length=30, choices=[(c, c) for c in COUNTERS])
    period_start = models.DateTimeField()
    value = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["org", "counter", "period_start"], name="one_counter_per_period"
            )
        ]

    def __str__(self) -> str:
        return f"{self.org_id} {self.counter}={self.value} from {self.period_start:%Y-%m-%d}"

from django.conf import settings
from django.db import models

from agentpost.orgs.models import Organization


class WeeklySummary(models.Model):
    """One owner's weekly usage email for one org and one week, claimed once.

    The unique row is taken before the email goes out, so the task running twice
    (or on two workers) sends each owner one email a week.
    """

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    week_start = models.DateField(help_text="The Monday (UTC) of the week it covers.")
    sent_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "weekly summaries"
        constraints = [
            models.UniqueConstraint(
                fields=["org", "user", "week_start"], name="one_summary_per_owner_week"
            )
        ]

    def __str__(self) -> str:
        return f"{self.org_id} to {self.user} for week of {self.week_start}"

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


class WebhookEndpoint(models.Model):
    """A URL an org wants events POSTed to (``whk_...``).

    The signing secret is stored encrypted (see ``events.secrets``) and is shown to
    the org once, when it is made. After a rotation the previous secret keeps
    signing too until ``previous_secret_expires_at``, so receivers can switch over.
    """

    class DisabledReason(models.TextChoices):
        NONE = "", "enabled"
        BY_USER = "by_user", "disabled by the org"
        FAILING = "failing", "disabled after sustained failure"

    id = PrefixedIdField("whk")
    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.CharField(max_length=2048)
    description = models.CharField(max_length=500, blank=True)
    # Event types delivered here; ["*"] means every type, including future ones.
    event_types = models.JSONField(default=list)
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(
        max_length=20, choices=DisabledReason.choices, blank=True
    )
    disabled_at = models.DateTimeField(null=True, blank=True)
    secret_encrypted = models.TextField(editable=False)
    previous_secret_encrypted = models.TextField(blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    # Start of the current run of failed attempts; cleared by any success. The
    # endpoint is disabled when the run has lasted long enough.
    failing_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["org", "enabled"])]

    def __str__(self) -> str:
        return f"{self.id} {self.url}"

    def wants(self, event_type: str) -> bool:
        return "*" in self.event_types or event_type in self.event_types


class Delivery(models.Model):
    """One event to one endpoint, tried until it succeeds or the schedule ends.

    ``next_attempt_at`` is when a worker may next claim the row: the due time of a
    pending delivery, or the end of the lease of one being delivered. A worker
    that dies mid-attempt leaves a ``delivering`` row whose lease runs out, and the
    sweep claims it again: at least once, never silently lost.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERING = "delivering"
        SUCCEEDED = "succeeded"
        FAILED = "failed"  # the retry schedule ran out, or the endpoint was disabled

    id = PrefixedIdField("dlv")
    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(
        max_length=12, choices=Status.choices, default=Status.PENDING
    )
    attempt_count = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    # Why the last attempt failed, or why the delivery waits (quota, suspension).
    last_error = models.TextField(blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    replay_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "deliveries"
        indexes = [
            # The sweep: due rows of the two open states.
            models.Index(fields=["status", "next_attempt_at"]),
            models.Index(fields=["endpoint", "-id"]),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.status}"


class DeliveryAttempt(models.Model):
    """One HTTP request made for a delivery, written before it is sent.

    A row with no ``finished_at`` is an attempt whose worker died before it could
    record the answer.
    """

    delivery = models.ForeignKey(
        Delivery, on_delete=models.CASCADE, related_name="attempts"
    )
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    succeeded = models.BooleanField(default=False)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    response_excerpt = models.TextField(blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(
                fields=["delivery", "number"], name="one_attempt_per_number"
            )
        ]

    def __str__(self) -> str:
        return f"{self.delivery_id} #{self.number}"

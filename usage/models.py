"""
Plans, per-org limit overrides, usage counters and alert claims.

Counting is spread over shard rows so that one busy org does not serialise every
request on a single hot row; a counter's value is the sum of its shards. See
``usage/counting.py`` for how the rows are written.
"""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from agentpost.metering import COUNTERS
from agentpost.orgs.models import Organization

COUNTER_CHOICES = [(c, c) for c in COUNTERS]
DEFAULT_WARNING_THRESHOLD = 80  # percent of the limit


class Mode(models.TextChoices):
    HARD = "hard"  # refuse what would pass the limit
    SOFT = "soft"  # count on, and warn


class Plan(models.Model):
    """A tier, keyed by the code stored in ``Organization.plan``."""

    code = models.SlugField(max_length=50, primary_key=True)
    name = models.CharField(max_length=100)
    # A paid plan's price lives with billing (billing.PlanPrice); this row holds
    # what the plan allows.

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class PlanLimit(models.Model):
    plan = models.ForeignKey(Plan, on_delete=models.CASCADE, related_name="limits")
    counter = models.CharField(max_length=30, choices=COUNTER_CHOICES)
    # Null means no limit at all.
    limit = models.BigIntegerField(
        null=True, blank=True, validators=[MinValueValidator(0)]
    )
    mode = models.CharField(max_length=4, choices=Mode.choices, default=Mode.SOFT)
    warning_threshold = models.PositiveSmallIntegerField(
        default=DEFAULT_WARNING_THRESHOLD,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Percent of the limit at which usage.warning fires.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["plan", "counter"], name="one_limit_per_plan_counter"
            )
        ]

    def __str__(self) -> str:
        return f"{self.plan_id} {self.counter} {self.limit} {self.mode}"


class LimitOverride(models.Model):
    """One org's own value for a counter's limit, mode or threshold.

    A null field means "the plan's value". Written through
    ``usage.services.update_limit_overrides`` so that every change is audited.
    """

    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="limit_overrides"
    )
    counter = models.CharField(max_length=30, choices=COUNTER_CHOICES)
    limit = models.BigIntegerField(
        null=True, blank=True, validators=[MinValueValidator(0)]
    )
    mode = models.CharField(max_length=4, choices=Mode.choices, blank=True)
    warning_threshold = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
    )
    # Set by staff in the admin: the org may tighten it through the API, never
    # loosen or remove it.
    set_by_staff = models.BooleanField(default=False)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["org", "counter"], name="one_override_per_org_counter"
            )
        ]

    def __str__(self) -> str:
        return f"{self.org_id} {self.counter}"

    def as_dict(self) -> dict:
        return {
            "limit": self.limit,
            "mode": self.mode or None,
            "warning_threshold": self.warning_threshold,
        }


class UsageCounter(models.Model):
    """One shard of an org's counter in one period; the counter is their sum.

    ``storage_bytes`` is a level, not a count: its period_start is
    LEVEL_PERIOD_START and never changes. Shard 0 is the one hard limits use.
    """

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    counter = models.CharField(max_length=30, choices=COUNTER_CHOICES)
    period_start = models.DateTimeField()
    shard = models.PositiveSmallIntegerField(default=0)
    value = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["org", "counter", "period_start", "shard"],
                name="one_counter_shard_per_period",
            )
        ]

    def __str__(self) -> str:
        return f"{self.org_id} {self.counter}[{self.shard}]={self.value}"


class UsageDaily(models.Model):
    """How much of a counter one UTC day added, written with the counter itself.

    Sharded like UsageCounter. For storage_bytes the value is the day's change
    in bytes (it can be negative); history turns it back into a level.
    """

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    counter = models.CharField(max_length=30, choices=COUNTER_CHOICES)
    day = models.DateField()
    shard = models.PositiveSmallIntegerField(default=0)
    value = models.BigIntegerField(default=0)

    class Meta:
        verbose_name_plural = "usage daily"
        constraints = [
            models.UniqueConstraint(
                fields=["org", "counter", "day", "shard"], name="one_daily_shard"
            )
        ]

    def __str__(self) -> str:
        return f"{self.org_id} {self.counter}[{self.shard}] {self.day}={self.value}"


class UsageAlert(models.Model):
    """A usage.warning or usage.exceeded that has fired.

    The unique row is the claim: an alert fires once per org, counter, period,
    kind and limit, however many checks race for it. A new period or a new
    limit is a new key, which is what re-arms the alert.
    """

    class Kind(models.TextChoices):
        WARNING = "warning"
        EXCEEDED = "exceeded"

    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="usage_alerts"
    )
    counter = models.CharField(max_length=30, choices=COUNTER_CHOICES)
    period_start = models.DateTimeField()
    kind = models.CharField(max_length=10, choices=Kind.choices)
    limit = models.BigIntegerField()
    current = models.BigIntegerField()
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["org", "counter", "period_start", "kind", "limit"],
                name="one_alert_per_threshold",
            )
        ]
        indexes = [models.Index(fields=["org", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.org_id} {self.counter} {self.kind} at {self.current}"


class LiveOutbox(models.Model):
    """Work for Redis that must not be lost when Redis does not answer (usage.live).

    Written in the same transaction as what calls for it, done right after the
    commit, and left for the next flush if Redis was away:

    - ``limits``: the org's limits changed (no org: a plan's did), so the limits
      Redis has cached must be reloaded.
    - ``base``: calls of the org's counter in the period were counted in the
      database while Redis was away, so Redis's base must be read again.
    """

    class Kind(models.TextChoices):
        LIMITS = "limits"
        BASE = "base"

    kind = models.CharField(max_length=10, choices=Kind.choices)
    # An id, not a foreign key: a row may outlive its org by a flush.
    org_id = models.CharField(max_length=64, blank=True)
    counter = models.CharField(max_length=30, choices=COUNTER_CHOICES, blank=True)
    period_start = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "live outbox"

    def __str__(self) -> str:
        return f"{self.kind} {self.org_id or 'all orgs'} {self.counter}"

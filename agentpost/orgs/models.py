from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models

from agentpost.ids import PrefixedIdField

API_KEY_TOKEN_PREFIX = "ap_"
# Every org is on this plan, without limits, while billing is off.
SELFHOSTED_PLAN = "selfhosted"


class Organization(models.Model):
    class BillingState(models.TextChoices):
        ACTIVE = "active"
        PAST_DUE = "past_due"  # payment failed; access kept until grace_deadline
        SUSPENDED = "suspended"  # grace ended unpaid: access refused, data kept
        CANCELED = "canceled"

    id = PrefixedIdField("org")
    name = models.CharField(max_length=200)
    # The plan's code (see usage.Plan). A plain string keeps the core free of any
    # dependency on the usage and billing apps.
    plan = models.CharField(max_length=50, default="free")
    billing_email = models.EmailField(blank=True)
    billing_state = models.CharField(
        max_length=20, choices=BillingState.choices, default=BillingState.ACTIVE
    )
    grace_deadline = models.DateTimeField(null=True, blank=True)
    suspended_at = models.DateTimeField(null=True, blank=True)
    # The paid billing period (from the subscription); both null for a free org,
    # whose period is the calendar month in UTC.
    current_period_start = models.DateTimeField(null=True, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    @property
    def email(self) -> str:
        """The address Stripe bills (dj-stripe reads ``subscriber.email``)."""
        if self.billing_email:
            return self.billing_email
        owner = self.owners().first()
        return owner.email if owner else ""

    @property
    def effective_plan(self) -> str:
        """The plan in force: the org's own, or the self-hosted one without billing."""
        return self.plan if settings.BILLING_ENABLED else SELFHOSTED_PLAN

    @property
    def is_suspended(self) -> bool:
        return self.billing_state == self.BillingState.SUSPENDED

    def owner_emails(self) -> list[str]:
        """The addresses the org's owners are emailed at, sorted."""
        return sorted(
            set(self.owners().exclude(email="").values_list("email", flat=True))
        )

    def owners(self):
        from django.contrib.auth import get_user_model

        return get_user_model().objects.filter(
            memberships__org=self,
            memberships__role=Membership.Role.OWNER,
            is_active=True,
        )


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        MEMBER = "member"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    weekly_summary = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "org"], name="one_membership_per_org"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.org_id} as {self.role}"


def hash_token(token: str) -> str:
    # Keys are 240 bits of randomness, so a fast hash is enough: there is nothing
    # to brute-force, and lookups stay one indexed equality.
    return hashlib.sha256(token.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    id = PrefixedIdField("key")
    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100, blank=True)
    # The first characters of the token, shown so owners can tell keys apart.
    prefix = models.CharField(max_length=16)
    hashed_token = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or self.id})"

    @staticmethod
    def generate_token() -> str:
        return API_KEY_TOKEN_PREFIX + secrets.token_urlsafe(30)


class AuditEntry(models.Model):
    """Who changed what, when, and why: limits, retention, billing state, keys."""

    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="audit"
    )
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    actor_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL
    )
    action = models.CharField(max_length=100)
    old = models.JSONField(null=True, blank=True)
    new = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["org", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.action} on {self.org_id} at {self.created_at:%Y-%m-%d %H:%M}"

    @property
    def actor(self) -> str:
        if self.actor_user_id:
            return str(self.actor_user)
        if self.actor_key_id:
            return f"API key {self.actor_key_id}"
        return "system"

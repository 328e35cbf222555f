from django.db import models

from agentpost.orgs.models import Organization


class PlanPrice(models.Model):
    """The Stripe price of a paid plan (usage.Plan holds its limits).

    ``billing_sync_plans`` creates the product and price in Stripe by lookup key
    and fills in the Stripe ids.
    """

    class Interval(models.TextChoices):
        MONTH = "month"
        YEAR = "year"

    plan = models.OneToOneField(
        "usage.Plan", primary_key=True, on_delete=models.CASCADE, related_name="price"
    )
    lookup_key = models.CharField(max_length=100, unique=True)
    unit_amount_cents = models.PositiveIntegerField()
    interval = models.CharField(
        max_length=10, choices=Interval.choices, default="month"
    )
    stripe_product_id = models.CharField(max_length=100, blank=True)
    stripe_price_id = models.CharField(max_length=100, blank=True)
    grace_period_days = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="Overrides BILLING_GRACE_PERIOD_DAYS for this plan.",
    )
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "unit_amount_cents"]

    def __str__(self) -> str:
        return f"{self.plan_id} ({self.lookup_key})"

    @property
    def name(self) -> str:
        return self.plan.name


class StripeEvent(models.Model):
    """One Stripe webhook event, stored once by its id and processed in Celery.

    Staff see failed events in the admin, with their error, and can replay them.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        PROCESSING = "processing"
        PROCESSED = "processed"
        IGNORED = "ignored"  # valid, but nothing for us to do (logged why)
        FAILED = "failed"

    id = models.CharField(primary_key=True, max_length=255)
    type = models.CharField(max_length=100)
    api_version = models.CharField(max_length=50, blank=True)
    livemode = models.BooleanField(default=False)
    created = models.DateTimeField(help_text="When Stripe created the event.")
    payload = models.JSONField()
    org = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=20, choices=Status.choices, default="pending")
    detail = models.TextField(blank=True, help_text="Why it was ignored, or the error.")
    attempts = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField()
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "received_at"])]

    def __str__(self) -> str:
        return f"{self.id} {self.type} ({self.status})"

    @property
    def object_id(self) -> str:
        return (self.payload.get("data") or {}).get("object", {}).get("id", "")


class PaymentGrant(models.Model):
    """A paid invoice, granted once.

    ``invoice.paid`` and ``invoice.payment_succeeded`` arrive for one payment, and
    either may be redelivered: the unique invoice id makes the grant happen once.
    """

    invoice_id = models.CharField(max_length=255, unique=True)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    amount_paid_cents = models.BigIntegerField()
    granted_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.invoice_id} for {self.org_id}"


class OrgSubscription(models.Model):
    """The org's subscription as Stripe last described it (re-fetched, not guessed).

    dj-stripe keeps the full Stripe objects; this row is the part the API, the
    console and dunning read, kept in step by ``billing.services``.
    """

    org = models.OneToOneField(
        Organization,
        primary_key=True,
        on_delete=models.CASCADE,
        related_name="subscription",
    )
    stripe_customer_id = models.CharField(max_length=255, unique=True)
    stripe_subscription_id = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=30, blank=True)
    plan_code = models.CharField(max_length=50, blank=True)
    stripe_price_id = models.CharField(max_length=255, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    current_period_start = models.DateTimeField(null=True, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    grace_period_days = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Staff override of the plan's grace period."
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return (
            f"{self.org_id}: {self.plan_code or '-'} {self.status or 'no subscription'}"
        )

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES


# A subscription in these states still bills the customer; a new checkout would
# make a second one.
LIVE_STATUSES = frozenset({"active", "trialing", "past_due", "unpaid", "incomplete"})


class DunningCase(models.Model):
    """One unpaid invoice and what dunning did about it.

    The grace deadline is set at the first failure and never moved by later
    failures of the same invoice; only staff extend it (audited).
    """

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    invoice_id = models.CharField(max_length=255, unique=True)
    amount_due_cents = models.BigIntegerField(default=0)
    hosted_invoice_url = models.URLField(max_length=500, blank=True)
    first_failed_at = models.DateTimeField()
    grace_deadline = models.DateTimeField()
    attempts = models.PositiveIntegerField(default=1)
    # Stripe will not retry by itself (automatic collection, retries exhausted).
    final = models.BooleanField(default=False)
    reminder_sent_at = models.DateTimeField(null=True, blank=True)
    suspended_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["org", "resolved_at"])]

    def __str__(self) -> str:
        return f"{self.invoice_id} for {self.org_id}"

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None

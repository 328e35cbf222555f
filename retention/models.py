"""
Retention: each org's policy, the warnings sent before deletion, the receipts of
cleanup runs, and the bookkeeping that makes file deletion safe after a crash.

The rule these rows enforce (DESIGN invariant 5): a message is deleted only if a
warning that covers it (``RetentionNotice.cutoff``) was emailed to the org's
owners at least the notice period before (``RetentionNotice.delete_after``).
"""

from __future__ import annotations

from django.db import models

from agentpost.orgs.models import Organization


class RetentionPolicy(models.Model):
    """How long an org keeps its messages; no row, or null days, keeps them forever."""

    org = models.OneToOneField(
        Organization,
        primary_key=True,
        on_delete=models.CASCADE,
        related_name="retention_policy",
    )
    retention_days = models.PositiveIntegerField(null=True, blank=True)
    # The newest cutoff a warning was claimed for, and when. Warnings are claimed
    # with a conditional update on both columns, so two workers never send two.
    # A policy change clears them: the next deletion waits for a fresh warning.
    warned_through = models.DateTimeField(null=True, blank=True)
    warned_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "retention policies"

    def __str__(self) -> str:
        days = self.retention_days
        return f"{self.org_id}: {days} days" if days else f"{self.org_id}: forever"


class RetentionNotice(models.Model):
    """One warning: messages created before ``cutoff`` may go from ``delete_after``.

    ``delete_after`` stays null until the email has gone out; a notice that was
    never delivered authorises nothing. A policy change supersedes every notice.
    """

    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="retention_notices"
    )
    retention_days = models.PositiveIntegerField()
    cutoff = models.DateTimeField()
    # What the cutoff newly covered when the notice was written.
    messages = models.BigIntegerField(default=0)
    bytes = models.BigIntegerField(default=0)
    created_at = models.DateTimeField()
    # Set when a worker claims the sending, so a concurrent worker skips it.
    send_started_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    recipients = models.JSONField(default=list, blank=True)
    delete_after = models.DateTimeField(null=True, blank=True)
    superseded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["org", "delete_after"])]

    def __str__(self) -> str:
        return f"{self.org_id} before {self.cutoff:%Y-%m-%d %H:%M} ({self.messages})"


class RetentionRun(models.Model):
    """The receipt of one cleanup run in one org; counts only what was committed."""

    class Status(models.TextChoices):
        RUNNING = "running"
        FINISHED = "finished"
        FAILED = "failed"

    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="retention_runs"
    )
    cutoff = models.DateTimeField()
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.RUNNING
    )
    messages = models.BigIntegerField(default=0)
    attachments = models.BigIntegerField(default=0)
    bytes = models.BigIntegerField(default=0)
    batches = models.IntegerField(default=0)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["org", "-started_at"])]

    def __str__(self) -> str:
        return f"{self.org_id} {self.started_at:%Y-%m-%d %H:%M} {self.status}"


class PendingFileDeletion(models.Model):
    """A stored file whose row is gone, written in the transaction that deleted it.

    Files are removed from storage only after that commit, by draining this table;
    a crash in between leaves rows here for the next run to finish.
    """

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=300)
    run = models.ForeignKey(
        RetentionRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField()

    def __str__(self) -> str:
        return self.name


class MissingFile(models.Model):
    """A row whose file is not in storage, found by the orphan sweep, for staff."""

    class Kind(models.TextChoices):
        ATTACHMENT = "attachment"
        RAW = "raw"

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    object_id = models.CharField(max_length=40)
    name = models.CharField(max_length=300, unique=True)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.kind} {self.object_id}: {self.name}"


class ExportLease(models.Model):
    """An export in progress. While it is active, no file of its org is deleted."""

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    started_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["org", "expires_at"])]

    def __str__(self) -> str:
        return f"export of {self.org_id} at {self.started_at:%Y-%m-%d %H:%M}"

from __future__ import annotations

import hashlib

from django.db import models

from agentpost.ids import PrefixedIdField
from agentpost.orgs.models import Organization


def attachment_path(instance: Attachment, filename: str) -> str:
    # The stored name is built from ids only: an attachment's own name is data,
    # never part of a path.
    return f"attachments/{instance.org_id}/{instance.message_id}/{instance.id}"


def raw_mime_path(instance: Message, filename: str) -> str:
    return f"raw/{instance.org_id}/{instance.id}.eml"


class Inbox(models.Model):
    id = PrefixedIdField("inb")
    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="inboxes"
    )
    # The full address, lower-cased: local part @ AGENTPOST_MAIL_DOMAIN.
    address = models.CharField(max_length=254, unique=True)
    display_name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "inboxes"

    def __str__(self) -> str:
        return self.address


class Message(models.Model):
    class Direction(models.TextChoices):
        OUTBOUND = "outbound"
        INBOUND = "inbound"

    class Status(models.TextChoices):
        QUEUED = "queued"  # accepted by the API, waiting for the worker
        SENDING = "sending"  # claimed by a worker
        SENT = "sent"
        FAILED = "failed"
        RECEIVED = "received"
        # Stored but not shown: inbound mail past a hard messages_received limit,
        # or mail for a suspended org. Released when the limit allows.
        HELD = "held"

    id = PrefixedIdField("msg")
    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="messages"
    )
    inbox = models.ForeignKey(
        Inbox, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages"
    )
    direction = models.CharField(max_length=10, choices=Direction.choices)
    status = models.CharField(max_length=10, choices=Status.choices)
    from_address = models.CharField(max_length=998, blank=True)
    to = models.JSONField(default=list)
    cc = models.JSONField(default=list)
    bcc = models.JSONField(default=list)
    subject = models.TextField(blank=True)
    text = models.TextField(blank=True)
    html = models.TextField(blank=True)
    headers = models.JSONField(default=dict, blank=True)
    message_id_header = models.CharField(max_length=998, blank=True)
    # The raw MIME of inbound mail, as received, in storage.
    raw = models.FileField(upload_to=raw_mime_path, max_length=300, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["org", "created_at"]),
            models.Index(fields=["inbox", "-id"]),
            # Retention checks that no stored row names a file before removing it.
            models.Index(fields=["raw"], name="mail_message_raw_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.direction} {self.subject[:40]!r}"


class Attachment(models.Model):
    id = PrefixedIdField("att")
    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="attachments"
    )
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, related_name="attachments"
    )
    # A display name made safe (see agentpost.mail.filenames); never a path.
    filename = models.CharField(max_length=255)
    content_type = models.CharField(max_length=255, default="application/octet-stream")
    content_id = models.CharField(max_length=998, blank=True)
    inline = models.BooleanField(default=False)
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    file = models.FileField(upload_to=attachment_path, max_length=300)
    created_at = models.DateTimeField()

    class Meta:
        # Retention checks that no stored row names a file before removing it.
        indexes = [models.Index(fields=["file"], name="mail_attachment_file_idx")]

    def __str__(self) -> str:
        return f"{self.id} {self.filename}"


def inbound_raw_path(instance: InboundNotification, filename: str) -> str:
    # SNS message ids are UUIDs from AWS, but a path never trusts a sender.
    digest = hashlib.sha256(instance.sns_message_id.encode()).hexdigest()[:40]
    return f"inbound/{digest}.eml"


class InboundNotification(models.Model):
    """One SNS message on the SES inbound endpoint, kept whatever became of it.

    The SNS message id is unique, so SNS redeliveries of one notification store
    the mail once. Mail for an unknown recipient, or mail announced through S3
    that could not be fetched, stays here for staff to see (and to process
    again from the admin). The subscription handshake is recorded here too.
    """

    class Status(models.TextChoices):
        STORED = "stored"
        UNROUTED = "unrouted"  # no inbox has any of the recipients
        NOT_FETCHED = "not_fetched"  # content in S3, and S3 is not configured
        FAILED = "failed"
        CONFIRMING = "confirming"  # a SubscriptionConfirmation, task queued
        CONFIRMED = "confirmed"  # the task visited the SubscribeURL
        UNSUBSCRIBED = "unsubscribed"  # SNS says the subscription ended

    sns_message_id = models.CharField(max_length=100, unique=True)
    sns_type = models.CharField(max_length=30, default="Notification")
    topic_arn = models.CharField(max_length=300)
    ses_message_id = models.CharField(max_length=200, blank=True)
    recipients = models.JSONField(default=list)
    status = models.CharField(max_length=20, choices=Status.choices)
    detail = models.TextField(blank=True)
    # The SNS envelope and, for a notification, the parsed SES notification
    # without its "content" once that is kept as a file (here or on the message).
    notification = models.JSONField()
    # The raw MIME of mail that is not stored as a message (unrouted, failed).
    raw = models.FileField(upload_to=inbound_raw_path, max_length=300, blank=True)
    message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    received_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.sns_message_id} {self.status}"

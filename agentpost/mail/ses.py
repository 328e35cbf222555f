"""
Amazon SES inbound mail, as SNS posts it to ``POST /inbound/ses``.

Every message is checked in the same order, and the first failure answers
before anything is written: the topic must be allowed, the signature must
verify, and only then is the content read. What answers what:

- 2xx: the message was handled, or was handled before (a redelivery). This
  includes mail we keep without storing it as a message (unrouted, not
  fetched, failed): it is recorded for staff, and a retry by SNS would not
  change anything.
- 4xx: the message is refused and nothing is written. SNS does not retry
  client errors (only 5xx and timeouts), which is what we want for a forged
  post, a topic we do not listen to, or an SES sending event posted to the
  inbound URL by mistake: trying again would not make it acceptable.
- 5xx: something on our side failed (the signing certificate could not be
  fetched just now, the database is down); SNS retries, and redeliveries are
  harmless because the SNS message id is unique.

Message timestamps are not checked for freshness: SNS redelivers for up to an
hour, and a replayed message is recognised by its SNS message id anyway.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction

from agentpost.mail import s3, sns
from agentpost.mail.inbound import store_inbound_mail
from agentpost.mail.models import InboundNotification, Inbox, Message

logger = logging.getLogger(__name__)

# Fields of the SNS envelope kept on the record; the Message is kept parsed, the
# signature is of no use to staff.
_ENVELOPE_FIELDS = (
    "Type",
    "MessageId",
    "TopicArn",
    "Subject",
    "Timestamp",
    "SubscribeURL",
    "UnsubscribeURL",
    "SigningCertURL",
    "SignatureVersion",
)
MAX_SNS_MESSAGE_ID_LENGTH = 100
MAX_TOPIC_ARN_LENGTH = 300
# SES accepts at most 50 recipients per message; anything beyond is not ours.
MAX_RECIPIENTS = 100
RETRYABLE = (
    InboundNotification.Status.UNROUTED,
    InboundNotification.Status.NOT_FETCHED,
    InboundNotification.Status.FAILED,
)


class Rejected(Exception):
    """The post is refused; ``status`` and ``error_type`` go in the answer."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


@dataclass(frozen=True)
class Outcome:
    status: str  # the record's status, or "duplicate"
    record: InboundNotification


def receive_sns_message(
    *, envelope: dict, message_type_header: str, now: datetime
) -> Outcome:
    """Verify one SNS message posted to the inbound endpoint and act on it.

    Raises Rejected for anything that must be refused; nothing is written then.
    """
    message_type = envelope.get("Type")
    if message_type not in sns.MESSAGE_TYPES:
        raise Rejected(400, "invalid_request", "Type is not an SNS message type.")
    if message_type_header != message_type:
        raise Rejected(
            400,
            "invalid_request",
            "The x-amz-sns-message-type header does not match the body's Type.",
        )
    message_id = envelope.get("MessageId")
    if not isinstance(message_id, str) or not (
        0 < len(message_id) <= MAX_SNS_MESSAGE_ID_LENGTH
    ):
        raise Rejected(400, "invalid_request", "MessageId is missing or too long.")

    # The topic first: it is cheap, and a stranger's topic never makes us fetch
    # a certificate.
    topic_arn = envelope.get("TopicArn")
    if topic_arn not in settings.SES_INBOUND_TOPIC_ARNS:
        logger.warning("SNS message refused: topic not allowed topic=%s", topic_arn)
        raise Rejected(403, "topic_not_allowed", "This SNS topic is not allowed.")
    try:
        sns.verify_message(envelope, now=now)
    except sns.InvalidMessage as exc:
        logger.warning(
            "SNS message refused: bad signature topic=%s sns_message=%s reason=%s",
            topic_arn,
            message_id,
            exc,
        )
        raise Rejected(403, "invalid_signature", str(exc)) from None
    except sns.CertificateUnavailable as exc:
        logger.warning("SNS signing certificate unavailable reason=%s", exc)
        raise Rejected(
            503,
            "certificate_unavailable",
            "The SNS signing certificate could not be fetched; try again.",
        ) from None

    if message_type == sns.SUBSCRIPTION_CONFIRMATION:
        return _receive_subscription(envelope=envelope, now=now)
    if message_type == sns.UNSUBSCRIBE_CONFIRMATION:
        return _receive_unsubscribe(envelope=envelope, now=now)
    return _receive_notification(envelope=envelope, now=now)


def _envelope_summary(envelope: dict) -> dict:
    return {k: envelope[k] for k in _ENVELOPE_FIELDS if k in envelope}


def _claim(**fields) -> InboundNotification | None:
    """Create the record for an SNS message id, or return None if it exists.

    Call inside a transaction. A concurrent redelivery waits on the unique index
    until the first commits, then finds the row taken.
    """
    try:
        with transaction.atomic():
            return InboundNotification.objects.create(**fields)
    except IntegrityError:
        return None


def _duplicate(sns_message_id: str) -> Outcome:
    record = InboundNotification.objects.get(sns_message_id=sns_message_id)
    logger.info(
        "SNS redelivery ignored sns_message=%s status=%s", sns_message_id, record.status
    )
    return Outcome(status="duplicate", record=record)


def _receive_subscription(*, envelope: dict, now: datetime) -> Outcome:
    from agentpost.mail.tasks import confirm_sns_subscription

    try:
        sns.check_sns_url(envelope.get("SubscribeURL"), what="SubscribeURL")
    except sns.InvalidMessage as exc:
        raise Rejected(400, "invalid_request", str(exc)) from None
    with transaction.atomic():
        record = _claim(
            sns_message_id=envelope["MessageId"],
            sns_type=envelope["Type"],
            topic_arn=envelope["TopicArn"],
            status=InboundNotification.Status.CONFIRMING,
            notification={"sns": _envelope_summary(envelope)},
            received_at=now,
        )
        if record is None:
            return _duplicate(envelope["MessageId"])
        # Confirming is an outgoing request: a task makes it, after the commit.
        transaction.on_commit(lambda: confirm_sns_subscription.delay(record.pk))
    logger.info("SNS subscription confirmation queued topic=%s", record.topic_arn)
    return Outcome(status=record.status, record=record)


def _receive_unsubscribe(*, envelope: dict, now: datetime) -> Outcome:
    with transaction.atomic():
        record = _claim(
            sns_message_id=envelope["MessageId"],
            sns_type=envelope["Type"],
            topic_arn=envelope["TopicArn"],
            status=InboundNotification.Status.UNSUBSCRIBED,
            detail="SNS ended the subscription: no more inbound mail from this topic "
            "until it is subscribed again.",
            notification={"sns": _envelope_summary(envelope)},
            received_at=now,
        )
        if record is None:
            return _duplicate(envelope["MessageId"])
    # Not confirmed back: visiting its SubscribeURL would subscribe again, which
    # is for a person to decide.
    logger.warning("SNS subscription ended topic=%s", record.topic_arn)
    return Outcome(status=record.status, record=record)


def confirm_subscription(*, record_id: int, now: datetime) -> str:
    """Visit the SubscribeURL of a recorded SubscriptionConfirmation.

    Return the record's new status (``confirmed`` or ``failed``). A record that
    is not waiting for confirmation is left alone, so a task run twice confirms
    once.
    """
    import requests

    record = InboundNotification.objects.get(pk=record_id)
    # No claim: SNS confirms a subscription once however often its URL is
    # visited, so two tasks racing here do no harm.
    if record.sns_type != sns.SUBSCRIPTION_CONFIRMATION or record.status not in (
        InboundNotification.Status.CONFIRMING,
        InboundNotification.Status.FAILED,
    ):
        return record.status

    url = record.notification.get("sns", {}).get("SubscribeURL")
    try:
        # Checked again: the task must never be the way to reach another host.
        sns.check_sns_url(url, what="SubscribeURL")
        response = requests.get(url, timeout=10, allow_redirects=False)
        ok = response.status_code == 200
        detail = f"SubscribeURL answered {response.status_code} at {now.isoformat()}"
    except (sns.InvalidMessage, requests.RequestException) as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"[:1000]

    status = (
        InboundNotification.Status.CONFIRMED
        if ok
        else InboundNotification.Status.FAILED
    )
    InboundNotification.objects.filter(pk=record_id).update(
        status=status, detail=detail
    )
    if ok:
        logger.info("SNS subscription confirmed topic=%s", record.topic_arn)
    else:
        logger.warning(
            "SNS subscription not confirmed topic=%s detail=%s",
            record.topic_arn,
            detail,
        )
    return status


def _parse_ses_notification(message: object) -> dict:
    try:
        notification = json.loads(message) if isinstance(message, str) else None
    except ValueError:
        notification = None
    if not isinstance(notification, dict):
        raise Rejected(
            400,
            "invalid_notification",
            "The SNS Message is not an SES notification (not a JSON object).",
        )
    kind = notification.get("notificationType") or notification.get("eventType")
    if kind != "Received":
        raise Rejected(
            400,
            "unsupported_notification",
            f"This endpoint takes SES Received notifications, not {kind!r}; point "
            "sending events at their own topic and endpoint.",
        )
    if not isinstance(notification.get("mail"), dict) or not isinstance(
        notification.get("receipt"), dict
    ):
        raise Rejected(
            400, "invalid_notification", "The SES notification has no mail or receipt."
        )
    return notification


def envelope_recipients(notification: dict) -> list[str]:
    """Return the envelope recipients SES accepted for us, lower-cased."""
    # receipt.recipients are the ones the receipt rule matched; mail.destination
    # is every envelope recipient, ours or not, and is only the fallback.
    for candidates in (
        notification["receipt"].get("recipients"),
        notification["mail"].get("destination"),
    ):
        if isinstance(candidates, list):
            found = [r.strip().lower() for r in candidates if isinstance(r, str)]
            if found:
                return list(dict.fromkeys(found))[:MAX_RECIPIENTS]
    return []


def find_inboxes(recipients: list[str]) -> list[Inbox]:
    """Return each inbox among ``recipients``, in their order."""
    inboxes = {
        i.address: i
        for i in Inbox.objects.filter(address__in=recipients).select_related("org")
    }
    return [inboxes[r] for r in recipients if r in inboxes]


def _receive_notification(*, envelope: dict, now: datetime) -> Outcome:
    notification = _parse_ses_notification(envelope.get("Message"))
    sns_message_id = envelope["MessageId"]
    if InboundNotification.objects.filter(sns_message_id=sns_message_id).exists():
        return _duplicate(sns_message_id)

    # Fetching from S3 happens before the transaction, so no lock is held
    # across the network; a concurrent duplicate may fetch too, then loses below.
    raw, problem = read_raw_mime(notification)
    ses_mail = notification["mail"]
    if raw is not None:
        # The content is kept as a file from here; the JSON column stays small.
        notification = {k: v for k, v in notification.items() if k != "content"}
    with transaction.atomic():
        record = _claim(
            sns_message_id=sns_message_id,
            sns_type=sns.NOTIFICATION,
            topic_arn=envelope["TopicArn"],
            ses_message_id=str(ses_mail.get("messageId") or "")[:200],
            recipients=envelope_recipients(notification),
            status=InboundNotification.Status.FAILED,  # until delivered below
            notification={"sns": _envelope_summary(envelope), "ses": notification},
            received_at=now,
        )
        if record is None:
            return _duplicate(sns_message_id)
        deliver(record=record, raw=raw, problem=problem, now=now)
    return Outcome(status=record.status, record=record)


def read_raw_mime(notification: dict) -> tuple[bytes | None, tuple[str, str] | None]:
    """Return the raw MIME of a Received notification, or why there is none.

    The reason is ``(status, detail)``: ``not_fetched`` when the mail is in S3
    and cannot be fetched from here, ``failed`` when the content is broken.
    """
    content = notification.get("content")
    action = notification["receipt"].get("action") or {}
    if isinstance(content, str):
        encoding = str(action.get("encoding") or "UTF8").upper()
        if encoding == "BASE64":
            try:
                return base64.b64decode(content, validate=False), None
            except (binascii.Error, ValueError):
                return None, ("failed", "The BASE64 content does not decode.")
        if encoding == "UTF8":
            return content.encode("utf-8", errors="replace"), None
        return None, ("failed", f"Unknown content encoding {encoding!r}.")

    bucket, key = action.get("bucketName"), action.get("objectKey")
    if action.get("type") != "S3" or not bucket or not key:
        return None, (
            "not_fetched",
            "The notification has neither content nor an S3 location.",
        )
    where = f"s3://{bucket}/{key}"
    if action.get("kmsKeyArn"):
        return None, (
            "not_fetched",
            f"{where} is encrypted client-side with KMS, which is not supported; "
            "fetch and decrypt it by hand.",
        )
    if not settings.SES_INBOUND_S3_ENABLED:
        return None, (
            "not_fetched",
            f"The mail is in {where} and S3 fetching is off "
            "(SES_INBOUND_S3_ENABLED); turn it on and process this again.",
        )
    try:
        raw = s3.fetch_object(
            bucket=bucket, key=key, max_bytes=settings.SES_INBOUND_MAX_MESSAGE_BYTES
        )
    except s3.S3FetchFailed as exc:
        return None, ("not_fetched", f"Fetching {where} failed: {exc}")
    return raw, None


def deliver(
    *,
    record: InboundNotification,
    raw: bytes | None,
    problem: tuple[str, str] | None,
    now: datetime,
) -> None:
    """Store ``raw`` for each inbox among the record's recipients, or say why not.

    Call inside a transaction; updates and saves the record.
    """
    ses = record.notification.get("ses", {})
    if raw is None:
        record.status, record.detail = problem or ("failed", "No content.")
        record.save()
        logger.warning(
            "inbound mail kept but not stored sns_message=%s status=%s detail=%s",
            record.sns_message_id,
            record.status,
            record.detail,
        )
        return

    # From here the content lives in a file, not in the JSON column.
    ses.pop("content", None)
    inboxes = find_inboxes(record.recipients)
    if not inboxes:
        record.status = InboundNotification.Status.UNROUTED
        record.detail = "No inbox has any of the recipients."
        if not record.raw:
            record.raw.save("raw.eml", ContentFile(raw), save=False)
        record.save()
        logger.warning(
            "inbound mail unrouted sns_message=%s recipients=%s",
            record.sns_message_id,
            ",".join(record.recipients),
        )
        return

    messages: list[Message] = [
        store_inbound_mail(inbox=inbox, raw=raw, now=now) for inbox in inboxes
    ]
    record.status = InboundNotification.Status.STORED
    record.message = messages[0]
    record.detail = "Stored as " + ", ".join(
        f"{m.id} in {i.address}" for m, i in zip(messages, inboxes, strict=True)
    )
    if record.raw:
        # The messages keep their own copy; the file goes only once this is
        # committed, so a rollback leaves the record and its file as they were.
        name, storage = record.raw.name, record.raw.storage
        transaction.on_commit(lambda: storage.delete(name))
        record.raw = ""
    record.save()


def process_again(*, record_id: int, now: datetime) -> str:
    """Route a kept notification again (after an inbox was made, or S3 set up).

    Return the record's status afterwards. Only unrouted, not fetched and failed
    records are touched; the row is locked so two staff clicks store once.
    """
    with transaction.atomic():
        record = InboundNotification.objects.select_for_update().get(pk=record_id)
        if record.status not in RETRYABLE or record.sns_type != sns.NOTIFICATION:
            return record.status
        ses = record.notification.get("ses")
        if not isinstance(ses, dict) or not isinstance(ses.get("receipt"), dict):
            return record.status
        if record.raw:
            with record.raw.open("rb") as handle:
                raw, problem = handle.read(), None
        else:
            raw, problem = read_raw_mime(ses)
        deliver(record=record, raw=raw, problem=problem, now=now)
    logger.info(
        "inbound notification processed again sns_message=%s status=%s",
        record.sns_message_id,
        record.status,
    )
    return record.status

"""Sending and storing mail. Usage is charged through ``agentpost.metering``."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.utils import timezone

from agentpost import metering
from agentpost.events.services import MESSAGE_FAILED, MESSAGE_SENT, emit_event
from agentpost.mail.filenames import dedupe_filenames, safe_filename
from agentpost.mail.models import Attachment, Inbox, Message
from agentpost.orgs.models import Organization

logger = logging.getLogger(__name__)


class InboxTaken(Exception):
    pass


def create_inbox(
    *, org: Organization, local_part: str, display_name: str = ""
) -> Inbox:
    """Create the inbox ``local_part@AGENTPOST_MAIL_DOMAIN`` for the org."""
    address = f"{local_part.lower()}@{settings.AGENTPOST_MAIL_DOMAIN.lower()}"
    try:
        with transaction.atomic():
            return Inbox.objects.create(
                org=org, address=address, display_name=display_name
            )
    except IntegrityError:
        # The unique address decides, so two requests at once cannot both win.
        raise InboxTaken(address) from None


@dataclass
class NewAttachment:
    filename: str | None
    content_type: str
    content: bytes
    content_id: str = ""
    inline: bool = False


def save_attachments(
    *, message: Message, attachments: list[NewAttachment], now: datetime
) -> list[Attachment]:
    """Store the files and rows of a message's attachments (inside its transaction).

    Files are written before their rows; if the transaction then rolls back, the
    orphan sweep removes the files.
    """
    names = dedupe_filenames(
        [safe_filename(a.filename, content_type=a.content_type) for a in attachments]
    )
    saved = []
    for name, new in zip(names, attachments, strict=True):
        attachment = Attachment(
            org_id=message.org_id,
            message=message,
            filename=name,
            content_type=(new.content_type or "application/octet-stream")[:255],
            content_id=new.content_id[:998],
            inline=new.inline,
            size_bytes=len(new.content),
            sha256=hashlib.sha256(new.content).hexdigest(),
            created_at=now,
        )
        attachment.file.save(attachment.id, ContentFile(new.content), save=False)
        attachment.save()
        saved.append(attachment)
    return saved


def send_message(
    *,
    org: Organization,
    inbox: Inbox,
    to: list[str],
    cc: list[str],
    bcc: list[str],
    subject: str,
    text: str,
    html: str,
    attachments: list[NewAttachment],
    now: datetime,
) -> Message:
    """Accept a message for sending: charge usage, store it, queue the delivery.

    Raises QuotaExceeded (and stores nothing) at a hard limit.
    """
    from agentpost.mail.tasks import deliver_message

    stored_bytes = sum(len(a.content) for a in attachments)
    with transaction.atomic():
        metering.charge(org_id=org.id, counter=metering.MESSAGES_SENT, now=now)
        if stored_bytes:
            metering.charge(
                org_id=org.id,
                counter=metering.STORAGE_BYTES,
                amount=stored_bytes,
                now=now,
            )
        message = Message.objects.create(
            org=org,
            inbox=inbox,
            direction=Message.Direction.OUTBOUND,
            status=Message.Status.QUEUED,
            from_address=inbox.address,
            to=to,
            cc=cc,
            bcc=bcc,
            subject=subject,
            text=text,
            html=html,
            size_bytes=len(text.encode()) + len(html.encode()) + stored_bytes,
            created_at=now,
        )
        save_attachments(message=message, attachments=attachments, now=now)
        transaction.on_commit(lambda: deliver_message.delay(message.id))
    logger.info("message accepted org=%s message=%s", org.id, message.id)
    return message


def deliver_message(*, message_id: str) -> str:
    """Hand a queued outbound message to Django's email backend; return its status.

    The message is claimed with a conditional update, so two workers that got the
    same task never both send it.
    """
    claimed = Message.objects.filter(
        pk=message_id, status=Message.Status.QUEUED
    ).update(status=Message.Status.SENDING)
    message = Message.objects.select_related("inbox").get(pk=message_id)
    if not claimed:
        return message.status

    email = EmailMultiAlternatives(
        subject=message.subject,
        body=message.text,
        from_email=message.from_address,
        to=message.to,
        cc=message.cc,
        bcc=message.bcc,
    )
    if message.html:
        email.attach_alternative(message.html, "text/html")
    for attachment in message.attachments.all():
        with attachment.file.open("rb") as handle:
            email.attach(attachment.filename, handle.read(), attachment.content_type)

    try:
        email.send()
    except Exception as exc:  # the backend's errors are many and unrelated
        logger.exception("send failed message=%s", message.id)
        return _finish_delivery(message, Message.Status.FAILED, error=str(exc)[:1000])
    return _finish_delivery(message, Message.Status.SENT)


def _finish_delivery(message: Message, status: str, error: str = "") -> str:
    now = timezone.now()
    with transaction.atomic():
        Message.objects.filter(pk=message.pk).update(
            status=status,
            error=error,
            sent_at=now if status == Message.Status.SENT else None,
        )
        emit_event(
            org=message.org_id,
            type=MESSAGE_SENT if status == Message.Status.SENT else MESSAGE_FAILED,
            data={
                "message_id": message.id,
                "inbox_id": message.inbox_id,
                "error": error,
            },
            now=now,
        )
    logger.info("message %s message=%s", status, message.id)
    return status

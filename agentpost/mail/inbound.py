"""Storing inbound mail: parse the MIME, route by recipient, keep every byte."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses

from django.core.files.base import ContentFile
from django.db import transaction

from agentpost import metering
from agentpost.events.services import MESSAGE_RECEIVED, emit_event
from agentpost.mail.models import Inbox, Message
from agentpost.mail.services import NewAttachment, save_attachments

logger = logging.getLogger(__name__)

# Headers kept on the message for the API (all of them stay in the raw MIME).
MAX_HEADER_VALUE = 2000


@dataclass
class ParsedMail:
    from_address: str
    to: list[str]
    cc: list[str]
    subject: str
    text: str
    html: str
    headers: dict[str, list[str]]
    message_id: str
    attachments: list[NewAttachment]


def _addresses(message: EmailMessage, name: str) -> list[str]:
    try:
        values = message.get_all(name, [])
        return [addr for _, addr in getaddresses([str(v) for v in values]) if addr]
    except Exception:  # malformed headers must not lose the mail
        return []


def _header(message: EmailMessage, name: str) -> str:
    try:
        return str(message.get(name, "") or "")
    except Exception:
        return ""


def _content(part: EmailMessage) -> bytes | str:
    try:
        return part.get_content()
    except (LookupError, ValueError, AssertionError):
        # Unknown charset or broken transfer encoding: keep the bytes as they are.
        return part.get_payload(decode=True) or b""


def parse_mime(raw: bytes) -> ParsedMail:
    """Parse raw RFC 5322 bytes into the fields AgentPost stores."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    text_parts: list[str] = []
    html_parts: list[str] = []
    attachments: list[NewAttachment] = []

    for part in message.walk():
        if part.is_multipart():
            continue
        content_type = part.get_content_type()
        disposition = part.get_content_disposition()
        filename = part.get_filename()
        content_id = (_header(part, "Content-ID")).strip().strip("<>")
        is_body = disposition is None and filename is None
        if is_body and content_type == "text/plain":
            value = _content(part)
            text_parts.append(
                value if isinstance(value, str) else value.decode(errors="replace")
            )
        elif is_body and content_type == "text/html":
            value = _content(part)
            html_parts.append(
                value if isinstance(value, str) else value.decode(errors="replace")
            )
        else:
            payload = part.get_payload(decode=True) or b""
            attachments.append(
                NewAttachment(
                    filename=filename,
                    content_type=content_type,
                    content=payload,
                    content_id=content_id,
                    inline=disposition == "inline" or bool(content_id and not filename),
                )
            )

    headers: dict[str, list[str]] = {}
    for key, value in message.raw_items():
        headers.setdefault(key, []).append(str(value)[:MAX_HEADER_VALUE])
    from_list = _addresses(message, "From")
    return ParsedMail(
        from_address=from_list[0] if from_list else _header(message, "From")[:998],
        to=_addresses(message, "To"),
        cc=_addresses(message, "Cc"),
        subject=_header(message, "Subject"),
        # Bodies arrive with CRLF line ends (the wire format); the API speaks \n.
        text="\n".join(text_parts).replace("\r\n", "\n"),
        html="\n".join(html_parts).replace("\r\n", "\n"),
        headers=headers,
        message_id=_header(message, "Message-ID")[:998],
        attachments=attachments,
    )


def find_inbox(recipients: list[str]) -> Inbox | None:
    """Return the first inbox among the envelope recipients, if any."""
    addresses = [r.strip().lower() for r in recipients if r]
    inboxes = {i.address: i for i in Inbox.objects.filter(address__in=addresses)}
    for address in addresses:
        if address in inboxes:
            return inboxes[address]
    return None


def received_event_data(message: Message) -> dict:
    """The data of a message.received event."""
    return {
        "message_id": message.id,
        "inbox_id": message.inbox_id,
        "from": message.from_address,
        "subject": message.subject,
    }


def store_inbound_mail(*, inbox: Inbox, raw: bytes, now: datetime) -> Message:
    """Store one inbound message with its raw MIME and attachments.

    Inbound mail is never refused for quota: it is counted even past a hard limit
    (``enforce=False``); the usage app holds what is over the limit.
    """
    parsed = parse_mime(raw)
    org_id = inbox.org_id
    with transaction.atomic():
        message = Message(
            org_id=org_id,
            inbox=inbox,
            direction=Message.Direction.INBOUND,
            # A suspended org's mail is stored but held until it is reinstated.
            status=Message.Status.HELD
            if inbox.org.is_suspended
            else Message.Status.RECEIVED,
            from_address=parsed.from_address[:998],
            to=parsed.to,
            cc=parsed.cc,
            subject=parsed.subject,
            text=parsed.text,
            html=parsed.html,
            headers=parsed.headers,
            message_id_header=parsed.message_id,
            size_bytes=len(raw),
            created_at=now,
        )
        message.raw.save(message.id, ContentFile(raw), save=False)
        message.save()
        attachments = save_attachments(
            message=message, attachments=parsed.attachments, now=now
        )
        received = metering.charge(
            org_id=org_id, counter=metering.MESSAGES_RECEIVED, now=now, enforce=False
        )
        if received is not None and received.over_limit:
            # Past a hard limit: kept, but hidden until usage releases it.
            message.status = Message.Status.HELD
            message.save(update_fields=["status"])
        stored = sum(a.size_bytes for a in attachments)
        if stored:
            metering.charge(
                org_id=org_id,
                counter=metering.STORAGE_BYTES,
                amount=stored,
                now=now,
                enforce=False,
            )
        if message.status != Message.Status.HELD:  # held mail is announced on release
            emit_event(
                org=org_id,
                type=MESSAGE_RECEIVED,
                data=received_event_data(message),
                now=now,
            )
    logger.info(
        "inbound stored org=%s message=%s attachments=%d bytes=%d",
        org_id,
        message.id,
        len(attachments),
        len(raw),
    )
    return message

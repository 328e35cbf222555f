"""Builders for retention tests: messages at a given age, with stored files."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import pytest
import time_machine
from django.core.files.storage import default_storage

from agentpost import metering
from agentpost.mail.inbound import store_inbound_mail
from agentpost.mail.models import Message
from agentpost.mail.services import NewAttachment, save_attachments
from tests.conftest import CURRENT_TIME

NOW = CURRENT_TIME
DAY = timedelta(days=1)


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def outbound(
    org, inbox, *, created_at: datetime, files: dict[str, bytes] | None = None
) -> Message:
    """Store an outbound message as send_message does, without delivering it."""
    files = files or {}
    message = Message.objects.create(
        org=org,
        inbox=inbox,
        direction=Message.Direction.OUTBOUND,
        status=Message.Status.SENT,
        from_address=inbox.address,
        to=["someone@example.com"],
        subject=f"sent {created_at:%Y-%m-%d %H:%M:%S.%f}",
        text="hello",
        created_at=created_at,
    )
    save_attachments(
        message=message,
        attachments=[
            NewAttachment(filename=name, content_type="application/pdf", content=data)
            for name, data in files.items()
        ],
        now=created_at,
    )
    size = sum(len(data) for data in files.values())
    if size:
        metering.charge(
            org_id=org.id, counter=metering.STORAGE_BYTES, amount=size, now=created_at
        )
    return message


INBOUND_MIME = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: agent@agentpost.test\r\n"
    b"Subject: Quarterly numbers\r\n"
    b"Message-ID: <q1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n"
    b"--b1\r\nContent-Type: text/csv\r\n"
    b"Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9%20Q1.csv\r\n"
    b"\r\na,b\r\n1,2\r\n"
    b"--b1--\r\n"
)


def inbound(inbox, *, created_at: datetime, raw: bytes = INBOUND_MIME) -> Message:
    return store_inbound_mail(inbox=inbox, raw=raw, now=created_at)


def stored_names(message: Message) -> list[str]:
    names = [a.file.name for a in message.attachments.all()]
    if message.raw:
        names.append(message.raw.name)
    return names


def exists(name: str) -> bool:
    return default_storage.exists(name)


def set_mtime(name: str, when: datetime) -> None:
    path = default_storage.path(name)
    os.utime(path, (when.timestamp(), when.timestamp()))

"""
The full export of one org, streamed as a single ZIP in constant memory.

Layout of the archive (every path is built from ids and ASCII, never taken
from customer data as is)::

    organization.json             the org, its inboxes and members
    retention_policy.json         the policy, its warnings and cleanup receipts
    audit.jsonl                   the org's audit trail
    messages.jsonl                one message per line, attachments listed
    raw/<message id>.eml          the raw MIME of inbound mail
    attachments/<message id>/<attachment id>_<ascii name>
    manifest.json                 counts, and size and SHA-256 of every file

One moment: on PostgreSQL the whole stream reads in one REPEATABLE READ, READ
ONLY transaction, so rows added or deleted meanwhile are not seen. Files are
read from storage while streaming, so an ``ExportLease`` holds off every file
deletion in the org (cleanup, its drain, the orphan sweep) until the export
ends; rows deleted after the snapshot keep their files until then. On SQLite
(the embedded default, no long read transaction there) the snapshot is bounded
by ``created_at`` and cleanup pauses for the org while the lease is held.

Constant memory: rows come through server-side cursors in chunks, files in
chunks of FILE_CHUNK_BYTES, and what grows with the org (the ZIP's central
directory and the manifest's file list) is spooled to temporary files.

Never exported: API keys (not even their prefixes), password hashes, webhook
signing secrets, anything of another org.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files.storage import default_storage
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone
from zipstream import ZIP_STORED, ZipStream

from agentpost.mail.models import Attachment, Inbox, Message
from agentpost.orgs.models import AuditEntry, Membership, Organization
from retention.models import ExportLease, RetentionNotice, RetentionRun
from retention.services import get_policy

logger = logging.getLogger("agentpost.retention").getChild(__name__.rpartition(".")[2])

FORMAT_VERSION = 1
FILE_CHUNK_BYTES = 1024 * 1024
ROWS_CHUNK = 500
LINES_BUFFER_BYTES = 256 * 1024
SPOOL_CHUNK_BYTES = 256 * 1024


def safe_component(value: str, *, fallback: str = "file", limit: int = 80) -> str:
    """Return ``value`` as one harmless ASCII path component."""
    text = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:limit].strip("._-")
    return text or fallback


def safe_filename(filename: str) -> str:
    """Return an ASCII file name that keeps a short, plain extension."""
    stem, dot, ext = filename.rpartition(".")
    if not dot or not re.fullmatch(r"[A-Za-z0-9]{1,10}", ext):
        return safe_component(filename)
    return f"{safe_component(stem, limit=70)}.{ext}"


def attachment_path(*, message_id: str, attachment_id: str, filename: str) -> str:
    return (
        f"attachments/{safe_component(message_id)}/"
        f"{safe_component(attachment_id)}_{safe_filename(filename)}"
    )


def raw_path(message_id: str) -> str:
    return f"raw/{safe_component(message_id)}.eml"


def export_filename(*, org_id: str, now: datetime) -> str:
    return f"agentpost-export-{safe_component(org_id)}-{now:%Y%m%dT%H%M%SZ}.zip"


class _Record:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def _central_directory_header_data(self) -> bytes:
        return self.data


class _SpooledDirectory:
    """Stands in for ZipStream's in-memory list of entries.

    zipstream-ng (pinned) keeps one ZipInfo per entry until the footer, about
    550 bytes each: 80 MB for 150,000 files. This writes each entry's central
    directory record to a temporary file as soon as the entry is complete and
    gives the records back in chunks when the footer is written.
    """

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()
        self._count = 0

    def append(self, zinfo) -> None:
        self._file.write(zinfo._central_directory_header_data())
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[_Record]:
        self._file.seek(0)
        while chunk := self._file.read(SPOOL_CHUNK_BYTES):
            yield _Record(chunk)

    def close(self) -> None:
        self._file.close()


class _SpooledList:
    """A list of JSON values kept in a temporary file, for the manifest."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()
        self.count = 0

    def append(self, value) -> None:
        self._file.write(json.dumps(value).encode() + b"\n")
        self.count += 1

    def json_lines(self) -> Iterator[bytes]:
        """Yield the values as the items of an indented JSON array."""
        self._file.seek(0)
        first = True
        for line in self._file:
            yield (b"" if first else b",\n") + b"  " + line.rstrip(b"\n")
            first = False

    def close(self) -> None:
        self._file.close()


class _Archive:
    """A ZIP written entry by entry, with a size and SHA-256 kept per file."""

    def __init__(self) -> None:
        self.zip = ZipStream(compress_type=ZIP_STORED)
        self.directory = _SpooledDirectory()
        self.zip._filelist = self.directory
        self.files = _SpooledList()
        # What grows with the org's problems is spooled too.
        self.missing = _SpooledList()
        self.mismatched = _SpooledList()

    @property
    def file_count(self) -> int:
        return self.files.count

    def add(self, path: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
        self.zip.add(self._hashed(path, chunks), path)
        yield from self.zip.file()

    def _hashed(self, path: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
        digest = hashlib.sha256()
        size = 0
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            yield chunk
        self.last_size = size
        self.last_sha256 = digest.hexdigest()
        self.files.append({"path": path, "size": size, "sha256": self.last_sha256})

    def finish(self, manifest: dict) -> Iterator[bytes]:
        # Not hashed: the manifest cannot list its own checksum.
        self.zip.add(self._manifest(manifest), "manifest.json")
        yield from self.zip.file()
        yield from self.zip.footer()

    def _manifest(self, manifest: dict) -> Iterator[bytes]:
        head = json.dumps(manifest, indent=1, cls=DjangoJSONEncoder)
        yield head[: head.rindex("}")].rstrip().encode()
        lists = [
            ("missing_files", self.missing),
            ("checksum_mismatches", self.mismatched),
            ("files", self.files),
        ]
        for key, spooled in lists:
            yield f',\n "{key}": [\n'.encode()
            yield from spooled.json_lines()
            yield b"\n ]"
        yield b"\n}\n"

    def close(self) -> None:
        self.directory.close()
        self.files.close()
        self.missing.close()
        self.mismatched.close()


_ENCODER = DjangoJSONEncoder(ensure_ascii=False)


def _json(value) -> bytes:
    return _ENCODER.encode(value).encode()


def _lines(rows: Iterable[dict]) -> Iterator[bytes]:
    """Yield JSON lines in blocks of about LINES_BUFFER_BYTES."""
    buffer: list[bytes] = []
    size = 0
    for row in rows:
        line = _json(row) + b"\n"
        buffer.append(line)
        size += len(line)
        if size >= LINES_BUFFER_BYTES:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)


def _read(handle) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(FILE_CHUNK_BYTES):
            yield chunk


@contextmanager
def _snapshot():
    """Read everything inside one REPEATABLE READ transaction where possible.

    Yields True when the transaction gives the snapshot, False when the caller
    must bound its reads itself.
    """
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                )
            yield True
    else:
        yield False


def _organization(org: Organization) -> dict:
    return {
        "id": org.id,
        "name": org.name,
        "plan": org.effective_plan,
        "billing_email": org.billing_email,
        "billing_state": org.billing_state,
        "grace_deadline": org.grace_deadline,
        "suspended_at": org.suspended_at,
        "current_period_start": org.current_period_start,
        "current_period_end": org.current_period_end,
        "created_at": org.created_at,
        "inboxes": list(
            Inbox.objects.filter(org=org)
            .order_by("id")
            .values("id", "address", "display_name", "created_at")
        ),
        "members": [
            {"email": m.user.email, "role": m.role, "created_at": m.created_at}
            for m in Membership.objects.filter(org=org).select_related("user")
        ],
    }


def _policy(org: Organization) -> dict:
    policy = get_policy(org=org)
    return {
        "retention_days": policy.retention_days if policy else None,
        "updated_at": policy.updated_at if policy else None,
        "notices": list(
            RetentionNotice.objects.filter(org=org)
            .order_by("created_at")
            .values(
                "retention_days",
                "cutoff",
                "messages",
                "bytes",
                "created_at",
                "sent_at",
                "delete_after",
                "superseded_at",
            )
        ),
        "cleanup_receipts": list(
            RetentionRun.objects.filter(org=org)
            .order_by("started_at")
            .values(
                "cutoff",
                "status",
                "messages",
                "attachments",
                "bytes",
                "started_at",
                "finished_at",
            )
        ),
    }


def _audit(org: Organization, bound: dict) -> Iterator[dict]:
    entries = AuditEntry.objects.filter(org=org, **bound).order_by("created_at", "pk")
    for entry in entries.select_related("actor_user").iterator(chunk_size=ROWS_CHUNK):
        yield {
            "action": entry.action,
            "actor": entry.actor,
            "old": entry.old,
            "new": entry.new,
            "reason": entry.reason,
            "created_at": entry.created_at,
        }


MESSAGE_FIELDS = (
    "id",
    "inbox_id",
    "direction",
    "status",
    "from_address",
    "to",
    "cc",
    "bcc",
    "subject",
    "text",
    "html",
    "headers",
    "message_id_header",
    "size_bytes",
    "error",
    "created_at",
    "sent_at",
    "raw",
)
ATTACHMENT_FIELDS = (
    "attachments__id",
    "attachments__filename",
    "attachments__content_type",
    "attachments__content_id",
    "attachments__inline",
    "attachments__size_bytes",
    "attachments__sha256",
)


def _messages(messages) -> Iterator[dict]:
    """Yield one dict per message with its attachments listed.

    One query, messages joined to their attachments and read as plain tuples
    through a server-side cursor: no model instances and no prefetch query
    per chunk. Rows of one message are consecutive (ordered by id).
    """
    rows = (
        messages.order_by("id", "attachments__id")
        .values_list(*MESSAGE_FIELDS, *ATTACHMENT_FIELDS)
        .iterator(chunk_size=ROWS_CHUNK)
    )
    message = None
    for row in rows:
        if message is None or row[0] != message["id"]:
            if message is not None:
                yield message
            (id, inbox_id, direction, status, from_address, to, cc, bcc, subject,
             text, html, headers, message_id_header, size_bytes, error, created_at,
             sent_at, raw) = row[:18]  # fmt: skip
            message = {
                "id": id,
                "inbox_id": inbox_id,
                "direction": direction,
                "status": status,
                "from": from_address,
                "to": to,
                "cc": cc,
                "bcc": bcc,
                "subject": subject,
                "text": text,
                "html": html,
                "headers": headers,
                "message_id_header": message_id_header,
                "size_bytes": size_bytes,
                "error": error,
                "created_at": created_at,
                "sent_at": sent_at,
                "raw_path": raw_path(id) if raw else None,
                "attachments": [],
            }
        pk, filename, content_type, content_id, inline, size, sha256 = row[18:]
        if pk is not None:
            message["attachments"].append(
                {
                    "id": pk,
                    "filename": filename,
                    "content_type": content_type,
                    "content_id": content_id,
                    "inline": inline,
                    "size_bytes": size,
                    "sha256": sha256,
                    "path": attachment_path(
                        message_id=message["id"], attachment_id=pk, filename=filename
                    ),
                }
            )
    if message is not None:
        yield message


def stream_export(*, org_id: str, now: datetime) -> Iterator[bytes]:
    """Yield the bytes of the org's export archive as of ``now``."""
    lease = ExportLease.objects.create(
        org_id=org_id,
        started_at=now,
        expires_at=now + timedelta(hours=settings.RETENTION_EXPORT_LEASE_HOURS),
    )
    archive = _Archive()
    try:
        with _snapshot() as exact:
            yield from _stream(archive, org_id=org_id, now=now, exact=exact)
    finally:
        archive.close()
        # The lease ends when the stream does, whenever that is.
        ExportLease.objects.filter(pk=lease.pk).update(finished_at=timezone.now())


def _stream(archive: _Archive, *, org_id: str, now: datetime, exact: bool):
    org = Organization.objects.get(pk=org_id)
    bound = {} if exact else {"created_at__lte": now}
    counts = {
        "messages": 0,
        "inbound_raw": 0,
        "attachments": 0,
        "attachment_bytes": 0,
    }

    yield from archive.add("organization.json", [_json(_organization(org))])
    yield from archive.add("retention_policy.json", [_json(_policy(org))])
    yield from archive.add("audit.jsonl", _lines(_audit(org, bound)))

    messages = Message.objects.filter(org=org, **bound).order_by("id")

    def message_rows():
        for message in _messages(messages):
            counts["messages"] += 1
            yield message

    yield from archive.add("messages.jsonl", _lines(message_rows()))

    raws = messages.exclude(raw="").values_list("id", "raw")
    for message_id, name in raws.iterator(chunk_size=ROWS_CHUNK * 4):
        try:
            handle = default_storage.open(name, "rb")
        except OSError:
            archive.missing.append(name)
            continue
        yield from archive.add(raw_path(message_id), _read(handle))
        counts["inbound_raw"] += 1

    attachments = (
        Attachment.objects.filter(org=org, **bound)
        .order_by("message_id", "id")
        .values_list("id", "message_id", "filename", "file", "sha256")
    )
    for pk, message_id, filename, name, sha256 in attachments.iterator(
        chunk_size=ROWS_CHUNK * 4
    ):
        try:
            handle = default_storage.open(name, "rb")
        except OSError:
            archive.missing.append(name)
            continue
        path = attachment_path(
            message_id=message_id, attachment_id=pk, filename=filename
        )
        yield from archive.add(path, _read(handle))
        counts["attachments"] += 1
        counts["attachment_bytes"] += archive.last_size
        if archive.last_sha256 != sha256:
            archive.mismatched.append(path)

    if archive.missing.count or archive.mismatched.count:
        logger.warning(
            "export problems org=%s missing=%d mismatched=%d",
            org.id,
            archive.missing.count,
            archive.mismatched.count,
        )
    logger.info(
        "export done org=%s messages=%d attachments=%d files=%d",
        org.id,
        counts["messages"],
        counts["attachments"],
        archive.file_count,
    )
    yield from archive.finish(
        {
            "format": "agentpost-export",
            "version": FORMAT_VERSION,
            "org_id": org.id,
            "generated_at": now,
            "snapshot": "repeatable_read" if exact else "created_at_bound",
            "counts": {**counts, "files": archive.file_count},
        }
    )

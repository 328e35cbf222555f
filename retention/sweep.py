"""
Find stored files with no row, and rows with no stored file.

What is never deleted: any row; a file that a message or attachment row names;
a file younger than RETENTION_ORPHAN_MIN_AGE_HOURS (an upload writes its file
before its row commits, so a young file without a row may be in flight); any
file of an org with an export in progress.

Boundaries: one org folder at a time; names are checked against the database
500 at a time, and each file is removed on its own (no transaction is held
while storage is touched). Rows whose file is missing are only reported, as
``MissingFile`` rows for staff and a log warning.

How to undo: removed files are gone from the live storage; restore them from
the storage backup. Files removed here had no row, so nothing in the product
can have shown them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files.storage import default_storage

from agentpost.iterables import batched
from agentpost.mail.models import Attachment, Message
from agentpost.orgs.models import Organization
from retention.models import MissingFile
from retention.services import export_in_progress

logger = logging.getLogger("agentpost.retention").getChild(__name__.rpartition(".")[2])

CHECK_BATCH_SIZE = 500


@dataclass
class SweepResult:
    orphans_removed: int = 0
    orphans_too_young: int = 0
    missing: int = 0


def _listdir(path: str) -> tuple[list[str], list[str]]:
    try:
        return default_storage.listdir(path)
    except FileNotFoundError:
        return [], []


def _org_files(org_id: str) -> Iterator[str]:
    """Yield the names of every stored file of the org (attachments and raw MIME)."""
    message_dirs, _ = _listdir(f"attachments/{org_id}")
    for message_dir in message_dirs:
        _, files = _listdir(f"attachments/{org_id}/{message_dir}")
        for name in files:
            yield f"attachments/{org_id}/{message_dir}/{name}"
    _, files = _listdir(f"raw/{org_id}")
    for name in files:
        yield f"raw/{org_id}/{name}"


def sweep_orphans(
    *, now: datetime, org_id: str | None = None, dry_run: bool = False
) -> SweepResult:
    """Remove old files that no row names; report rows whose file is missing."""
    result = SweepResult()
    # Folders of orgs that no longer exist hold nothing but orphans.
    org_ids = sorted(
        set(_listdir("attachments")[0])
        | set(_listdir("raw")[0])
        | set(Organization.objects.values_list("id", flat=True))
    )
    if org_id:
        org_ids = [o for o in org_ids if o == org_id] or [org_id]
    for org in org_ids:
        if export_in_progress(org_id=org, now=now):
            logger.info("sweep skipped org=%s export in progress", org)
            continue
        found = _sweep_org_files(org_id=org, now=now, dry_run=dry_run, result=result)
        _report_missing(
            org_id=org, found=found, now=now, dry_run=dry_run, result=result
        )
    logger.info(
        "sweep done orphans_removed=%d too_young=%d missing=%d dry_run=%s",
        result.orphans_removed,
        result.orphans_too_young,
        result.missing,
        dry_run,
    )
    return result


def _sweep_org_files(
    *, org_id: str, now: datetime, dry_run: bool, result: SweepResult
) -> set[str]:
    min_age = timedelta(hours=settings.RETENTION_ORPHAN_MIN_AGE_HOURS)
    found: set[str] = set()
    for names in batched(_org_files(org_id), CHECK_BATCH_SIZE):
        found.update(names)
        referenced = set(
            Attachment.objects.filter(file__in=names).values_list("file", flat=True)
        ) | set(Message.objects.filter(raw__in=names).values_list("raw", flat=True))
        for name in names:
            if name in referenced:
                continue
            if now - default_storage.get_modified_time(name) < min_age:
                result.orphans_too_young += 1
                continue
            if not dry_run:
                default_storage.delete(name)
            result.orphans_removed += 1
            logger.info(
                "orphan file removed org=%s name=%s dry_run=%s", org_id, name, dry_run
            )
    return found


def _report_missing(
    *, org_id: str, found: set[str], now: datetime, dry_run: bool, result: SweepResult
) -> None:
    # Rows younger than the safety age may have been written after the listing.
    before = now - timedelta(hours=settings.RETENTION_ORPHAN_MIN_AGE_HOURS)
    rows = [
        (MissingFile.Kind.ATTACHMENT, pk, name)
        for pk, name in Attachment.objects.filter(org_id=org_id, created_at__lt=before)
        .values_list("pk", "file")
        .iterator(chunk_size=2000)
        if name not in found
    ] + [
        (MissingFile.Kind.RAW, pk, name)
        for pk, name in Message.objects.filter(org_id=org_id, created_at__lt=before)
        .exclude(raw="")
        .values_list("pk", "raw")
        .iterator(chunk_size=2000)
        if name not in found
    ]
    missing = {name for _, _, name in rows if not default_storage.exists(name)}
    for kind, pk, name in rows:
        if name not in missing:
            continue
        result.missing += 1
        logger.warning(
            "stored file missing org=%s kind=%s object=%s name=%s",
            org_id,
            kind,
            pk,
            name,
        )
        if dry_run:
            continue
        record, created = MissingFile.objects.get_or_create(
            name=name,
            defaults={
                "org_id": org_id,
                "kind": kind,
                "object_id": pk,
                "first_seen_at": now,
                "last_seen_at": now,
            },
        )
        if not created:
            MissingFile.objects.filter(pk=record.pk).update(
                last_seen_at=now, resolved_at=None
            )
    if not dry_run:
        # A file that came back (restored from backup) is no longer missing.
        MissingFile.objects.filter(org_id=org_id, resolved_at__isnull=True).exclude(
            name__in=missing
        ).update(resolved_at=now)

"""
Delete expired messages, their attachments and their stored files.

What is never deleted: a message not covered by a warning whose notice period
has passed (see ``services.deletion_cutoff``), anything in a suspended org
(suspension takes access, not data), anything in an org with an export in
progress, and a file that a stored message or attachment still refers to.

Boundaries: one org at a time, each with its own cutoff in UTC. One transaction
per batch of RETENTION_DELETE_BATCH_SIZE messages, each statement bounded by
RETENTION_STATEMENT_TIMEOUT_MS on PostgreSQL. A batch deletes the attachment
and message rows, gives back ``storage_bytes``, adds to the run's receipt and
records the files in ``PendingFileDeletion``, all in that one transaction.
Files are removed from storage only after it commits, by draining that table;
a crash at any point leaves either the whole batch or none of it, and the next
run drains what is left.

How to undo: there is no undo once a batch commits. Restore rows from a
database backup and files from the storage backup; the receipts
(``RetentionRun``) say which org, cutoff and counts to look for. Until a
batch's files are drained, its ``PendingFileDeletion`` rows name every file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import F

from agentpost import metering
from agentpost.mail.models import Attachment, InboundNotification, Message
from agentpost.orgs.models import Organization
from retention.models import PendingFileDeletion, RetentionPolicy, RetentionRun
from retention.services import deletion_cutoff, export_in_progress, measure

logger = logging.getLogger("agentpost.retention").getChild(__name__.rpartition(".")[2])

DRAIN_BATCH_SIZE = 500
# A run stops after this many batches; the next run goes on from there.
MAX_BATCHES_PER_RUN = 10_000


@dataclass
class OrgResult:
    org_id: str
    cutoff: datetime | None
    messages: int = 0
    attachments: int = 0
    bytes: int = 0
    skipped: str = ""


def run_cleanup(
    *,
    now: datetime,
    org_id: str | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
) -> list[OrgResult]:
    """Delete what each org's policy and matured warnings allow; return per org."""
    policies = RetentionPolicy.objects.filter(retention_days__isnull=False)
    if org_id:
        policies = policies.filter(org_id=org_id)
    results = []
    for policy in policies.select_related("org").order_by("org_id"):
        results.append(
            cleanup_org(
                org=policy.org,
                days=policy.retention_days,
                now=now,
                dry_run=dry_run,
                batch_size=batch_size or settings.RETENTION_DELETE_BATCH_SIZE,
            )
        )
    if not dry_run:
        drain_file_deletions(now=now, org_id=org_id)
    return results


def cleanup_org(
    *,
    org: Organization,
    days: int,
    now: datetime,
    batch_size: int,
    dry_run: bool = False,
) -> OrgResult:
    """Delete the org's messages that are expired and were warned about."""
    cutoff = deletion_cutoff(org_id=org.id, days=days, now=now)
    result = OrgResult(org_id=org.id, cutoff=cutoff)
    if cutoff is None:
        result.skipped = "no matured warning"
        return result
    if org.is_suspended:
        result.skipped = "suspended"
        return result
    if export_in_progress(org_id=org.id, now=now):
        result.skipped = "export in progress"
        return result
    if dry_run:
        result.messages, result.bytes = measure(org_id=org.id, before=cutoff)
        return result

    # Finish what an earlier, interrupted run left before deleting more.
    drain_file_deletions(now=now, org_id=org.id)
    if not Message.objects.filter(org=org, created_at__lt=cutoff).exists():
        return result

    run = RetentionRun.objects.create(org=org, cutoff=cutoff, started_at=now)
    try:
        for _ in range(MAX_BATCHES_PER_RUN):
            if export_in_progress(org_id=org.id, now=now):
                result.skipped = "export in progress"
                break
            deleted = delete_batch(
                org_id=org.id, cutoff=cutoff, run=run, now=now, batch_size=batch_size
            )
            if deleted is None:
                break
            result.messages += deleted[0]
            result.attachments += deleted[1]
            result.bytes += deleted[2]
            # After the commit, never before: the rows are gone, so are the files.
            drain_file_deletions(now=now, org_id=org.id, run=run)
    except Exception as exc:
        RetentionRun.objects.filter(pk=run.pk).update(
            status=RetentionRun.Status.FAILED, error=repr(exc)[:1000]
        )
        logger.exception("cleanup failed org=%s run=%s", org.id, run.pk)
        raise
    RetentionRun.objects.filter(pk=run.pk).update(
        status=RetentionRun.Status.FINISHED, finished_at=now
    )
    logger.info(
        "cleanup done org=%s cutoff=%s messages=%d attachments=%d bytes=%d",
        org.id,
        cutoff.isoformat(),
        result.messages,
        result.attachments,
        result.bytes,
    )
    return result


def _bound_statement_time() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('statement_timeout', %s, true)",
                [str(settings.RETENTION_STATEMENT_TIMEOUT_MS)],
            )


def delete_batch(
    *, org_id: str, cutoff: datetime, run: RetentionRun, now: datetime, batch_size: int
) -> tuple[int, int, int] | None:
    """Delete one batch in one transaction; return (messages, attachments, bytes).

    Returns None when nothing is left before the cutoff.
    """
    started = time.monotonic()
    with transaction.atomic():
        _bound_statement_time()
        # SKIP LOCKED gives concurrent runs disjoint batches, so no byte is
        # credited twice; the counts below are of rows this transaction holds.
        rows = list(
            Message.objects.filter(org_id=org_id, created_at__lt=cutoff)
            .order_by("created_at")
            .select_for_update(skip_locked=True)
            .values_list("id", "raw")[:batch_size]
        )
        if not rows:
            return None
        ids = [pk for pk, _ in rows]
        attachments = list(
            Attachment.objects.filter(message_id__in=ids).values_list(
                "file", "size_bytes"
            )
        )
        names = [raw for _, raw in rows if raw] + [f for f, _ in attachments if f]
        size = sum(s for _, s in attachments)

        PendingFileDeletion.objects.bulk_create(
            [
                PendingFileDeletion(org_id=org_id, name=name, run=run, created_at=now)
                for name in names
            ]
        )
        InboundNotification.objects.filter(message_id__in=ids).update(message=None)
        Attachment.objects.filter(message_id__in=ids).delete()
        # The collector would load every message (bodies included) to cascade;
        # attachments and notifications are handled above, and any other row
        # still pointing here makes the database refuse the whole batch.
        Message.objects.filter(pk__in=ids)._raw_delete(Message.objects.db)
        if size:
            metering.credit(
                org_id=org_id, counter=metering.STORAGE_BYTES, amount=size, now=now
            )
        RetentionRun.objects.filter(pk=run.pk).update(
            messages=F("messages") + len(ids),
            attachments=F("attachments") + len(attachments),
            bytes=F("bytes") + size,
            batches=F("batches") + 1,
        )
    logger.info(
        "cleanup batch org=%s run=%s messages=%d attachments=%d bytes=%d seconds=%.3f",
        org_id,
        run.pk,
        len(ids),
        len(attachments),
        size,
        time.monotonic() - started,
    )
    return len(ids), len(attachments), size


def drain_file_deletions(
    *, now: datetime, org_id: str | None = None, run: RetentionRun | None = None
) -> int:
    """Remove the files of deleted rows from storage; return how many went.

    Skips orgs with an export in progress, and never removes a file that a row
    still names (that pending entry is dropped with a warning instead). Empty
    per-message folders on a local disk are left in place: removing them cost
    more than the rest of the cleanup together (measured in the benchmark).
    """
    pending = PendingFileDeletion.objects.order_by("pk")
    if org_id:
        pending = pending.filter(org_id=org_id)
    if run is not None:
        pending = pending.filter(run=run)
    removed = 0
    last_pk = 0
    blocked: dict[str, bool] = {}
    for _ in range(MAX_BATCHES_PER_RUN):
        batch = list(
            pending.filter(pk__gt=last_pk).values_list("pk", "org_id", "name")[
                :DRAIN_BATCH_SIZE
            ]
        )
        if not batch:
            break
        last_pk = batch[-1][0]
        for org in {o for _, o, _ in batch} - set(blocked):
            blocked[org] = export_in_progress(org_id=org, now=now)
        batch = [row for row in batch if not blocked[row[1]]]
        names = [name for _, _, name in batch]
        referenced = set(
            Attachment.objects.filter(file__in=names).values_list("file", flat=True)
        ) | set(Message.objects.filter(raw__in=names).values_list("raw", flat=True))
        for _, org, name in batch:
            if name in referenced:
                logger.warning("file still referenced, kept org=%s name=%s", org, name)
                continue
            default_storage.delete(name)
            removed += 1
        PendingFileDeletion.objects.filter(pk__in=[pk for pk, _, _ in batch]).delete()
    return removed

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
records the files in ``PendingFileDeletion``, all in that one transaction (on
PostgreSQL one statement does the rows, the pending names and the receipt).
Files are removed from storage only after it commits: a worker thread removes
batch N's files while batch N+1 is deleted, and batch N+1 commits only once
they are all gone (a storage error rolls it back and stops the run). A crash
at any point leaves either the whole batch or none of it, and the next run
drains what is left.

How to undo: there is no undo once a batch commits. Restore rows from a
database backup and files from the storage backup; the receipts
(``RetentionRun``) say which org, cutoff and counts to look for. Until a
batch's files are drained, its ``PendingFileDeletion`` rows name every file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
    files = _FileRemover(org_id=org.id, now=now)
    try:
        for _ in range(MAX_BATCHES_PER_RUN):
            if export_in_progress(org_id=org.id, now=now):
                result.skipped = "export in progress"
                break
            batch = delete_batch(
                org_id=org.id,
                cutoff=cutoff,
                run=run,
                now=now,
                batch_size=batch_size,
                settle=files.settle,
            )
            if batch is None:
                break
            result.messages += batch.messages
            result.attachments += batch.attachments
            result.bytes += batch.bytes
            # After the commit, never before: the rows are gone, so are the files.
            if batch.pending is None:
                drain_file_deletions(now=now, org_id=org.id, run=run)
            else:
                files.start(batch.pending)
        files.settle()
    except Exception as exc:
        files.close()
        RetentionRun.objects.filter(pk=run.pk).update(
            status=RetentionRun.Status.FAILED, error=repr(exc)[:1000]
        )
        logger.exception("cleanup failed org=%s run=%s", org.id, run.pk)
        raise
    files.close()
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


@dataclass
class Batch:
    messages: int
    attachments: int
    bytes: int
    # (PendingFileDeletion pk, file name) of the batch's files, when the
    # statement returned them; None means "drain by querying".
    pending: list[tuple[int, str]] | None


def delete_batch(
    *,
    org_id: str,
    cutoff: datetime,
    run: RetentionRun,
    now: datetime,
    batch_size: int,
    settle: Callable[[], object] | None = None,
) -> Batch | None:
    """Delete one batch in one transaction; return what it removed.

    Returns None when nothing is left before the cutoff. ``settle`` is called
    inside the transaction, just before it commits: a failure there (the
    previous batch's files could not be removed) rolls this batch back.
    """
    started = time.monotonic()
    with transaction.atomic():
        _bound_statement_time()
        if connection.vendor == "postgresql":
            batch = _delete_batch_postgresql(
                org_id=org_id, cutoff=cutoff, run=run, now=now, batch_size=batch_size
            )
        else:
            batch = _delete_batch_portable(
                org_id=org_id, cutoff=cutoff, run=run, now=now, batch_size=batch_size
            )
        if batch is not None and batch.bytes:
            metering.credit(
                org_id=org_id,
                counter=metering.STORAGE_BYTES,
                amount=batch.bytes,
                now=now,
            )
        if settle is not None:
            settle()
        if batch is None:
            return None
    logger.info(
        "cleanup batch org=%s run=%s messages=%d attachments=%d bytes=%d seconds=%.3f",
        org_id,
        run.pk,
        batch.messages,
        batch.attachments,
        batch.bytes,
        time.monotonic() - started,
    )
    return batch


def _batch_sql() -> str:
    # One statement per batch: pick the oldest expired messages (SKIP LOCKED
    # gives concurrent runs disjoint batches, so no byte is credited twice),
    # detach their inbound notifications, delete their attachments and them,
    # name every freed file in the pending table and add to the receipt. The
    # counts and bytes come from RETURNING, so they are exactly the rows this
    # statement removed. Any other row still pointing at a message makes the
    # database refuse the whole batch at commit (the foreign keys are deferred).
    message = Message._meta.db_table
    attachment = Attachment._meta.db_table
    notification = InboundNotification._meta.db_table
    pending = PendingFileDeletion._meta.db_table
    run = RetentionRun._meta.db_table
    return f"""
    WITH picked AS MATERIALIZED (
        SELECT id FROM {message}
        WHERE org_id = %(org)s AND created_at < %(cutoff)s
        ORDER BY created_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ),
    detached AS (
        UPDATE {notification} SET message_id = NULL
        WHERE message_id IN (SELECT id FROM picked)
    ),
    attachments AS (
        DELETE FROM {attachment} WHERE message_id IN (SELECT id FROM picked)
        RETURNING file, size_bytes
    ),
    messages AS (
        DELETE FROM {message} WHERE id IN (SELECT id FROM picked)
        RETURNING raw
    ),
    pending AS (
        INSERT INTO {pending} (org_id, name, run_id, created_at)
        SELECT %(org)s, name, %(run)s, %(now)s FROM (
            SELECT file AS name FROM attachments WHERE file <> ''
            UNION ALL
            SELECT raw FROM messages WHERE raw <> ''
        ) AS files
        RETURNING id, name
    ),
    totals AS (
        SELECT
            (SELECT count(*) FROM messages) AS messages,
            (SELECT count(*) FROM attachments) AS attachments,
            (SELECT coalesce(sum(size_bytes), 0) FROM attachments) AS bytes
    ),
    receipt AS (
        UPDATE {run} SET
            messages = {run}.messages + totals.messages,
            attachments = {run}.attachments + totals.attachments,
            bytes = {run}.bytes + totals.bytes,
            batches = {run}.batches + 1
        FROM totals
        WHERE {run}.id = %(run)s AND totals.messages > 0
    )
    SELECT
        totals.messages,
        totals.attachments,
        totals.bytes,
        (SELECT array_agg(id ORDER BY id) FROM pending),
        (SELECT array_agg(name ORDER BY id) FROM pending)
    FROM totals
    """


def _delete_batch_postgresql(
    *, org_id: str, cutoff: datetime, run: RetentionRun, now: datetime, batch_size: int
) -> Batch | None:
    with connection.cursor() as cursor:
        cursor.execute(
            _batch_sql(),
            {
                "org": org_id,
                "cutoff": cutoff,
                "limit": batch_size,
                "run": run.pk,
                "now": now,
            },
        )
        messages, attachments, size, ids, names = cursor.fetchone()
    if not messages:
        return None
    return Batch(
        messages=messages,
        attachments=attachments,
        bytes=int(size),
        pending=list(zip(ids or [], names or [], strict=True)),
    )


def _delete_batch_portable(
    *, org_id: str, cutoff: datetime, run: RetentionRun, now: datetime, batch_size: int
) -> Batch | None:
    # The same steps as the PostgreSQL statement, one query each (SQLite).
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
        Attachment.objects.filter(message_id__in=ids).values_list("file", "size_bytes")
    )
    names = [f for f, _ in attachments if f] + [raw for _, raw in rows if raw]
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
    RetentionRun.objects.filter(pk=run.pk).update(
        messages=F("messages") + len(ids),
        attachments=F("attachments") + len(attachments),
        bytes=F("bytes") + size,
        batches=F("batches") + 1,
    )
    return Batch(
        messages=len(ids), attachments=len(attachments), bytes=size, pending=None
    )


class _FileRemover:
    """Remove one batch's files in a worker thread while the next batch runs.

    ``start`` is called after the commit that deleted a batch's rows, so no
    file is touched before that. ``settle`` waits for those files and then
    deletes their pending rows; cleanup calls it inside the next batch's
    transaction, so a storage error rolls that batch back and stops the run
    where the sequential version stopped. Until ``settle`` succeeds the
    pending rows stay, and the next run finishes the job.
    """

    def __init__(self, *, org_id: str, now: datetime) -> None:
        self.org_id = org_id
        self.now = now
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="retention-files"
        )
        self._future: Future[int] | None = None
        self._pks: list[int] = []

    def start(self, rows: list[tuple[int, str]]) -> None:
        assert self._future is None, "settle the previous batch first"
        if not rows or export_in_progress(org_id=self.org_id, now=self.now):
            return  # the pending rows wait for a later drain
        referenced = _still_referenced([name for _, name in rows])
        for name in referenced:
            logger.warning(
                "file still referenced, kept org=%s name=%s", self.org_id, name
            )
        names = [name for _, name in rows if name not in referenced]
        self._pks = [pk for pk, _ in rows]
        self._future = self._pool.submit(_delete_files, names)

    def settle(self) -> int:
        if self._future is None:
            return 0
        future, pks = self._future, self._pks
        self._future, self._pks = None, []
        removed = future.result()  # raises the storage's error, if any
        _forget_pending(pks)
        return removed

    def close(self) -> None:
        # Lets files in flight finish; their pending rows stay if unsettled.
        self._pool.shutdown(wait=True)


def _delete_files(names: list[str]) -> int:
    for name in names:
        default_storage.delete(name)
    return len(names)


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
    for _ in range(MAX_BATCHES_PER_RUN):
        batch = list(
            pending.filter(pk__gt=last_pk).values_list("org_id", "pk", "name")[
                :DRAIN_BATCH_SIZE
            ]
        )
        if not batch:
            break
        last_pk = batch[-1][1]
        by_org: dict[str, list[tuple[int, str]]] = {}
        for org, pk, name in batch:
            by_org.setdefault(org, []).append((pk, name))
        for org, rows in by_org.items():
            removed += _remove_pending(rows, now=now, org_id=org)
    return removed


def _remove_pending(rows: list[tuple[int, str]], *, now: datetime, org_id: str) -> int:
    """Remove the files of one org's pending rows, then the rows; return how many.

    Called only after the commit that deleted the rows naming these files.
    """
    if not rows or export_in_progress(org_id=org_id, now=now):
        return 0
    names = [name for _, name in rows]
    referenced = _still_referenced(names)
    removed = 0
    for _, name in rows:
        if name in referenced:
            logger.warning("file still referenced, kept org=%s name=%s", org_id, name)
            continue
        default_storage.delete(name)
        removed += 1
    # Only once every file is gone: a storage error above leaves the rows for
    # the next run (deleting a file that is already gone is harmless).
    _forget_pending([pk for pk, _ in rows])
    return removed


def _still_referenced(names: list[str]) -> set[str]:
    """Return those of ``names`` that an attachment or message row still names."""
    if connection.vendor == "postgresql":
        # Arrays rather than IN lists: one parameter each, however many names.
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT file FROM {Attachment._meta.db_table} WHERE file = ANY(%s) "
                f"UNION SELECT raw FROM {Message._meta.db_table} WHERE raw = ANY(%s)",
                [names, names],
            )
            return {name for (name,) in cursor.fetchall()}
    return set(
        Attachment.objects.filter(file__in=names).values_list("file", flat=True)
    ) | set(Message.objects.filter(raw__in=names).values_list("raw", flat=True))


def _forget_pending(pks: list[int]) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {PendingFileDeletion._meta.db_table} WHERE id = ANY(%s)",
                [pks],
            )
    else:
        PendingFileDeletion.objects.filter(pk__in=pks).delete()

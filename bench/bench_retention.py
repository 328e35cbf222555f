"""
Retention on PostgreSQL: cleanup against raw batched DELETEs, export against zip -0.

1. Two orgs of 100,000 messages each (half with an attachment), half of the
   messages expired. One org is emptied of its expired part by
   ``retention.cleanup`` (rows, receipt, counter, pending files, and the
   files themselves after each commit), the other by raw
   ``DELETE ... WHERE id IN (SELECT ... LIMIT n)`` statements over the same
   shape of rows with the same batch size (rows only, no files; the issue's
   target is against this). The raw org's files are then unlinked one by one
   and timed, for a second, with-files ratio.
2. One org of 100,000 messages (half with an attachment, 1.1 GB of them, and
   a tenth inbound with raw MIME) exported to a file by a child process, whose
   peak RSS is its VmHWM; ``zip -0 -r`` of the same files is timed.

Everything lives in the database agentpost_bench_retention (created and
dropped here) and a temporary directory (removed at the end). Loopback only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

DB_NAME = "agentpost_bench_retention"
SERVER_URL = "postgres://postgres@127.0.0.1:5432"
DATABASE_URL = f"{SERVER_URL}/{DB_NAME}"
MESSAGES = 100_000
BATCH_SIZE = 1000
EXPORT_ATTACHMENT_BYTES = 22_000  # x 50,000 attachments = 1.1 GB
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    """Run the benchmark in a child with its own settings, then clean up."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-retention-"))
    env = {
        **os.environ,
        "DATABASE_URL": DATABASE_URL,
        "DJANGO_SETTINGS_MODULE": "agentpost.settings",
        "MEDIA_ROOT": str(workdir / "media"),
        "LOG_LEVEL": "WARNING",
        "BENCH_WORKDIR": str(workdir),
    }
    _admin(f"DROP DATABASE IF EXISTS {DB_NAME}")
    _admin(f"CREATE DATABASE {DB_NAME}")
    try:
        subprocess.run(
            [sys.executable, "-m", "bench.bench_retention", "run"],
            env=env,
            cwd=ROOT,
            check=True,
            timeout=3600,
        )
    finally:
        _admin(f"DROP DATABASE IF EXISTS {DB_NAME}")
        shutil.rmtree(workdir, ignore_errors=True)


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{SERVER_URL}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def _setup_django() -> None:
    import django
    from django.conf import settings

    class NoMigrations:
        # Build tables from the models, as the test suite does: replaying
        # dj-stripe's migrations costs a minute of CPU for nothing measured here.
        def __contains__(self, item) -> bool:
            return True

        def __getitem__(self, item):
            return None

    settings.MIGRATION_MODULES = NoMigrations()
    django.setup()
    from django.core.management import call_command

    call_command("migrate", run_syncdb=True, verbosity=0)


def _copy(table: str, columns: list[str], rows) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        raw = cursor.cursor
        names = ", ".join(f'"{c}"' for c in columns)
        with raw.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


MESSAGE_COLUMNS = [
    "id", "org_id", "inbox_id", "direction", "status", "from_address", "to", "cc",
    "bcc", "subject", "text", "html", "headers", "message_id_header", "raw",
    "size_bytes", "error", "created_at", "sent_at",
]  # fmt: skip
ATTACHMENT_COLUMNS = [
    "id", "org_id", "message_id", "filename", "content_type", "content_id",
    "inline", "size_bytes", "sha256", "file", "created_at",
]  # fmt: skip


def build_org(
    name: str,
    *,
    attachment_bytes: int,
    write_files: str,
    inbound_every: int = 0,
) -> tuple:
    """Create an org of MESSAGES messages, the older half expired; return the
    org, its attachment bytes and the attachment files written.

    The first half is 30 days and i minutes old, the second half is spread
    over the last 15 days. Every second
    message has one attachment. ``write_files`` is "none", "expired" or "all".
    """
    from django.core.files.storage import default_storage

    from agentpost.mail.services import create_inbox
    from agentpost.orgs.services import create_org

    org = create_org(name=name, owner_email=f"{name}@bench.test").org
    inbox = create_inbox(org=org, local_part=name)
    root = Path(default_storage.location)
    block = os.urandom(attachment_bytes + 4096)
    expired_before = NOW - timedelta(days=30)
    messages, attachments = [], []
    files: list[Path] = []
    digests: dict[int, str] = {}  # the same slices recur: hash each once
    total_bytes = 0
    for i in range(MESSAGES):
        created = expired_before - timedelta(minutes=i + 1)
        if i >= MESSAGES // 2:
            created = NOW - timedelta(seconds=25 * (i - MESSAGES // 2 + 1))
        expired = created < expired_before
        wanted = write_files == "all" or (write_files == "expired" and expired)
        mid = f"msg_{name}{i:020d}"
        raw = ""
        if inbound_every and i % inbound_every == 0:
            raw = f"raw/{org.id}/{mid}.eml"
        messages.append(
            (mid, org.id, inbox.id, "inbound" if raw else "outbound", "sent",
             inbox.address, '["a@example.com"]', "[]", "[]", f"Bench message {i}",
             "Hello from the benchmark. " * 8, "", "{}", "", raw, 300, "",
             created, None)
        )  # fmt: skip
        if raw and wanted:
            path = root / raw
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"Subject: bench\r\n\r\n" + block[:1000])
        if i % 2:
            continue
        aid = f"att_{name}{i:020d}"
        file = f"attachments/{org.id}/{mid}/{aid}"
        offset = i % 4096
        content = block[offset : offset + attachment_bytes]
        if offset not in digests:
            digests[offset] = hashlib.sha256(content).hexdigest()
        attachments.append(
            (aid, org.id, mid, f"report-{i}.pdf", "application/pdf", "", False,
             attachment_bytes, digests[offset], file, created)
        )  # fmt: skip
        total_bytes += attachment_bytes
        if wanted:
            path = root / file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            files.append(path)
    _copy("mail_message", MESSAGE_COLUMNS, messages)
    _copy("mail_attachment", ATTACHMENT_COLUMNS, attachments)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE mail_message; ANALYZE mail_attachment")
    return org, total_bytes, files


def raw_delete(org_id: str, cutoff: datetime) -> tuple[int, float]:
    from django.db import connection, transaction

    pick = (
        "SELECT id FROM mail_message WHERE org_id = %s AND created_at < %s "
        "ORDER BY created_at LIMIT %s"
    )
    deleted = 0
    started = time.perf_counter()
    for _ in range(MESSAGES):
        with transaction.atomic(), connection.cursor() as cursor:
            args = [org_id, cutoff, BATCH_SIZE]
            cursor.execute(
                f"DELETE FROM mail_attachment WHERE message_id IN ({pick})", args
            )
            cursor.execute(f"DELETE FROM mail_message WHERE id IN ({pick})", args)
            if not cursor.rowcount:
                break
            deleted += cursor.rowcount
    return deleted, time.perf_counter() - started


def retention_delete(org, cutoff: datetime) -> tuple[int, float]:
    from retention import cleanup
    from retention.models import RetentionNotice, RetentionPolicy

    RetentionPolicy.objects.create(org=org, retention_days=30, updated_at=NOW)
    RetentionNotice.objects.create(
        org=org,
        retention_days=30,
        cutoff=cutoff,
        created_at=NOW - timedelta(days=8),
        sent_at=NOW - timedelta(days=8),
        delete_after=NOW - timedelta(days=1),
    )
    started = time.perf_counter()
    result = cleanup.cleanup_org(org=org, days=30, now=NOW, batch_size=BATCH_SIZE)
    return result.messages, time.perf_counter() - started


# The child's peak is VmHWM, the high-water mark of its own memory. Not
# getrusage's ru_maxrss: on Linux that keeps the forking parent's peak across
# exec, so it would report this benchmark's 100,000-row lists, not the export.
EXPORT_CHILD = """
import json, os, sys, time
from datetime import UTC, datetime
def peak_rss():
    with open("/proc/self/status") as status:
        line = next(l for l in status if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
import django
django.setup()
setup_rss = peak_rss()
from retention.export import stream_export
started = time.perf_counter()
size = 0
with open(sys.argv[2], "wb") as out:
    for chunk in stream_export(org_id=sys.argv[1], now=datetime.now(UTC)):
        out.write(chunk)
        size += len(chunk)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "bytes": size, "peak_rss": peak_rss(),
                  "setup_rss": setup_rss}))
"""


def run() -> None:
    workdir = Path(os.environ["BENCH_WORKDIR"])
    _setup_django()
    from django.conf import settings

    assert settings.DATABASES["default"]["NAME"] == DB_NAME
    rows = []

    # 1. Deleting the expired half: retention cleanup against raw DELETEs.
    t = time.perf_counter()
    raw_org, _, raw_files = build_org(
        "rawdel", attachment_bytes=100, write_files="expired"
    )
    ours_org, _, _ = build_org("ourdel", attachment_bytes=100, write_files="expired")
    print(f"built 2 x {MESSAGES:,} messages in {time.perf_counter() - t:.1f} s")
    cutoff = NOW - timedelta(days=30)
    raw_n, raw_s = raw_delete(raw_org.id, cutoff)
    # The raw side's files, removed one by one after all its commits: what a
    # raw DELETE plus a plain unlink loop would cost, for the with-files ratio.
    started = time.perf_counter()
    for path in raw_files:
        os.unlink(path)
    unlink_s = time.perf_counter() - started
    our_n, our_s = retention_delete(ours_org, cutoff)
    assert raw_n == our_n == MESSAGES // 2, (raw_n, our_n)
    from django.core.files.storage import default_storage

    left = sum(1 for _ in Path(default_storage.location, "attachments").rglob("att_*"))
    assert left == 0, f"{left} files left after cleanup"
    raw_rate, our_rate = raw_n / raw_s, our_n / our_s
    raw_files_rate = raw_n / (raw_s + unlink_s)
    rows.append(
        ("raw batched DELETE, rows/s", f"{raw_rate:,.0f}",
         f"{raw_s:.2f} s, rows only")
    )  # fmt: skip
    rows.append(
        ("raw DELETE + unlink, rows/s", f"{raw_files_rate:,.0f}",
         f"{raw_s + unlink_s:.2f} s, rows + {len(raw_files):,} files")
    )  # fmt: skip
    rows.append(
        ("retention cleanup, rows/s", f"{our_rate:,.0f}",
         f"{our_s:.2f} s, rows + receipt + counter + pending + files")
    )  # fmt: skip
    rows.append(
        ("cleanup / raw rows only (target >= 0.7)", f"{our_rate / raw_rate:.2f}x", "")
    )
    rows.append(("cleanup / raw + unlink", f"{our_rate / raw_files_rate:.2f}x", ""))

    # 2. Exporting 100,000 messages and 1.1 GB of attachments.
    t = time.perf_counter()
    org, total, _ = build_org(
        "export",
        attachment_bytes=EXPORT_ATTACHMENT_BYTES,
        write_files="all",
        inbound_every=10,
    )
    print(
        f"built the export org ({total / 1e9:.2f} GB) "
        f"in {time.perf_counter() - t:.1f} s"
    )
    media = Path(default_storage.location)
    zip_out = workdir / "baseline.zip"
    started = time.perf_counter()
    subprocess.run(
        [
            "zip",
            "-0",
            "-q",
            "-r",
            str(zip_out),
            f"attachments/{org.id}",
            f"raw/{org.id}",
        ],
        cwd=media,
        check=True,
    )
    zip_s = time.perf_counter() - started
    zip_size = zip_out.stat().st_size
    zip_out.unlink()

    export_out = workdir / "export.zip"
    child = subprocess.run(
        [sys.executable, "-c", EXPORT_CHILD, org.id, str(export_out)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    check = subprocess.run(["unzip", "-tqq", str(export_out)], capture_output=True)
    manifest = json.loads(
        subprocess.run(
            ["unzip", "-p", str(export_out), "manifest.json"],
            capture_output=True,
            check=True,
        ).stdout
    )
    export_out.unlink()
    counts = manifest["counts"]
    assert counts["messages"] == MESSAGES and counts["attachment_bytes"] == total
    assert not manifest["missing_files"] and not manifest["checksum_mismatches"]

    zip_rate = zip_size / zip_s
    our_rate = figures["bytes"] / figures["seconds"]
    rows.append(("export archive size", f"{figures['bytes'] / 1e9:.2f} GB", ""))
    rows.append(
        ("export peak RSS, whole process", f"{figures['peak_rss'] / 2**20:.0f} MB",
         f"target < 150 MB; {figures['setup_rss'] / 2**20:.0f} MB after setup")
    )  # fmt: skip
    rows.append(
        ("zip -0 of the same files, MB/s", f"{zip_rate / 1e6:,.0f}", f"{zip_s:.2f} s")
    )
    rows.append(
        ("export, MB/s", f"{our_rate / 1e6:,.0f}", f"{figures['seconds']:.2f} s")
    )
    rows.append(("export / zip -0 (target >= 0.5)", f"{our_rate / zip_rate:.2f}x", ""))
    rows.append(
        ("export archive valid (unzip -t)", "yes" if check.returncode == 0 else "NO",
         f"{counts['files']:,} files")
    )  # fmt: skip

    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'measure'.ljust(width)}  {'value':>12}  note")
    print(f"{'-' * width}  {'-' * 12}  {'-' * 24}")
    for label, value, note in rows:
        print(f"{label.ljust(width)}  {value:>12}  {note}")


if __name__ == "__main__" and sys.argv[1:] == ["run"]:
    run()

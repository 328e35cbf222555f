import logging
from io import StringIO

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command

from agentpost.mail.models import Attachment
from retention import sweep
from retention.models import ExportLease, MissingFile
from tests.retention.conftest import DAY, NOW, exists, inbound, outbound, set_mtime

OLD = NOW - 2 * DAY


def orphan(name: str, when) -> str:
    saved = default_storage.save(name, ContentFile(b"left behind"))
    set_mtime(saved, when)
    return saved


def test_it_removes_old_files_that_no_row_names(org, inbox, other):
    kept = outbound(org, inbox, created_at=OLD, files={"a.pdf": b"pdf"})
    mail = inbound(inbox, created_at=OLD)
    live = [a.file.name for a in Attachment.objects.all()] + [mail.raw.name]
    for name in live:
        set_mtime(name, OLD)
    old_attachment = orphan(f"attachments/{org.id}/msg_GONE/att_GONE", OLD)
    old_raw = orphan(f"raw/{org.id}/msg_GONE.eml", OLD)
    deleted_org = orphan("attachments/org_DELETED/msg_X/att_X", OLD)
    other_org = orphan(f"attachments/{other.org.id}/msg_Y/att_Y", OLD)

    result = sweep.sweep_orphans(now=NOW)

    assert result.orphans_removed == 4
    assert not any(exists(n) for n in (old_attachment, old_raw, deleted_org, other_org))
    assert all(exists(n) for n in live)
    assert kept.attachments.get().file.name in live


def test_a_young_file_may_be_an_upload_in_flight(org, settings):
    settings.RETENTION_ORPHAN_MIN_AGE_HOURS = 24
    young = orphan(f"attachments/{org.id}/msg_NEW/att_NEW", NOW - DAY + DAY / 24)
    old = orphan(f"attachments/{org.id}/msg_OLD/att_OLD", NOW - DAY)

    result = sweep.sweep_orphans(now=NOW)

    assert (result.orphans_removed, result.orphans_too_young) == (1, 1)
    assert exists(young) and not exists(old)


def test_rows_whose_file_is_missing_are_reported_to_staff(org, inbox, caplog):
    message = outbound(org, inbox, created_at=OLD, files={"a.pdf": b"pdf"})
    mail = inbound(inbox, created_at=OLD)
    attachment = message.attachments.get()
    default_storage.delete(attachment.file.name)
    default_storage.delete(mail.raw.name)
    recent = outbound(org, inbox, created_at=NOW, files={"b.pdf": b"pdf"})
    default_storage.delete(recent.attachments.get().file.name)  # may be in flight

    with caplog.at_level(logging.WARNING, logger="agentpost.retention"):
        result = sweep.sweep_orphans(now=NOW)

    assert result.missing == 2
    assert set(MissingFile.objects.values_list("kind", "object_id")) == {
        ("attachment", attachment.id),
        ("raw", mail.id),
    }
    assert sum("stored file missing" in r.getMessage() for r in caplog.records) == 2
    assert Attachment.objects.filter(pk=attachment.pk).exists()  # rows are kept

    # Restored from backup: no longer missing.
    default_storage.save(attachment.file.name, ContentFile(b"pdf"))
    sweep.sweep_orphans(now=NOW + DAY)
    open_rows = MissingFile.objects.filter(resolved_at__isnull=True)
    assert list(open_rows.values_list("object_id", flat=True)) == [mail.id]


def test_an_export_in_progress_holds_the_sweep_off(org):
    old = orphan(f"attachments/{org.id}/msg_GONE/att_GONE", OLD)
    ExportLease.objects.create(org=org, started_at=NOW, expires_at=NOW + DAY)
    sweep.sweep_orphans(now=NOW)
    assert exists(old)


def test_the_command_and_its_dry_run(org):
    # The command reads the real clock: make the file older than any safety age.
    old = orphan(f"raw/{org.id}/msg_GONE.eml", NOW.replace(year=2000))

    out = StringIO()
    call_command("retention_sweep_orphans", "--dry-run", "--org", org.id, stdout=out)
    assert "Would remove 1 orphan files" in out.getvalue()
    assert exists(old)

    call_command("retention_sweep_orphans", "--org", org.id, stdout=out)
    assert "Removed 1 orphan files" in out.getvalue()
    assert not exists(old)

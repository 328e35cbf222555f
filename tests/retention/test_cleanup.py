import logging
from io import StringIO

import pytest
from django.core.files.storage import FileSystemStorage
from django.core.management import call_command

from agentpost import metering
from agentpost.mail.models import Attachment, Message
from agentpost.orgs.models import Organization
from retention import cleanup, services
from retention.models import ExportLease, PendingFileDeletion, RetentionRun
from tests.retention.conftest import DAY, NOW, exists, inbound, outbound, stored_names

PDF = b"%PDF pretend\n" * 100  # 1,300 bytes


def warned(org, days: int, at=NOW):
    services.set_policy(org=org, retention_days=days, now=at)
    services.send_warnings(now=at)


def storage_used(api, org) -> int:
    return api.get(f"/organizations/{org.id}/usage").json()["storage_bytes"]["current"]


def test_nothing_is_deleted_before_the_notice_period(org, inbox, mailoutbox):
    old = outbound(org, inbox, created_at=NOW - 400 * DAY, files={"a.pdf": PDF})
    warned(org, 30)

    cleanup.run_cleanup(now=NOW + 7 * DAY - DAY / 86400)
    assert Message.objects.filter(pk=old.pk).exists()
    assert all(exists(n) for n in stored_names(old))

    cleanup.run_cleanup(now=NOW + 7 * DAY)
    assert not Message.objects.filter(pk=old.pk).exists()


def test_it_deletes_exactly_up_to_the_cutoff(org, inbox, mailoutbox):
    later = NOW
    cutoff = later - 30 * DAY
    just_before = outbound(org, inbox, created_at=cutoff - DAY / 86400 / 1000)
    at_cutoff = outbound(org, inbox, created_at=cutoff)
    # Warned 10 days ago, covering what existed then: cleanup now goes exactly
    # to 30 days before now, in UTC.
    warned(org, 30, at=NOW - 10 * DAY)

    cleanup.run_cleanup(now=later)

    assert not Message.objects.filter(pk=just_before.pk).exists()
    assert Message.objects.filter(pk=at_cutoff.pk).exists()
    receipt = RetentionRun.objects.get()
    assert receipt.cutoff == cutoff and receipt.messages == 1


def test_messages_that_arrived_after_the_warning_wait_for_their_own(
    org, inbox, mailoutbox
):
    warned(org, 1)
    after = outbound(org, inbox, created_at=NOW + DAY / 24)
    cleanup.run_cleanup(now=NOW + 8 * DAY)
    assert Message.objects.filter(pk=after.pk).exists()


def test_shortening_a_policy_never_deletes_at_once(org, inbox, mailoutbox):
    keep = outbound(org, inbox, created_at=NOW - 40 * DAY)
    warned(org, 90, at=NOW - 20 * DAY)

    services.set_policy(org=org, retention_days=30, now=NOW)
    cleanup.run_cleanup(now=NOW)
    assert Message.objects.filter(pk=keep.pk).exists()

    services.send_warnings(now=NOW)
    cleanup.run_cleanup(now=NOW + 6 * DAY)
    assert Message.objects.filter(pk=keep.pk).exists()
    cleanup.run_cleanup(now=NOW + 7 * DAY)
    assert not Message.objects.filter(pk=keep.pk).exists()


def test_it_deletes_in_batches_and_logs_each(org, inbox, mailoutbox, caplog):
    for i in range(5):
        outbound(org, inbox, created_at=NOW - (50 + i) * DAY, files={"a.pdf": PDF})
    young = outbound(org, inbox, created_at=NOW - DAY, files={"b.pdf": PDF})
    warned(org, 30)

    with caplog.at_level(logging.INFO, logger="agentpost.retention"):
        results = cleanup.run_cleanup(now=NOW + 7 * DAY, batch_size=2)

    assert [(r.messages, r.attachments, r.bytes) for r in results] == [
        (5, 5, 5 * len(PDF))
    ]
    batch_lines = [r for r in caplog.records if "cleanup batch" in r.getMessage()]
    assert len(batch_lines) == 3
    assert "messages=2 attachments=2" in batch_lines[0].getMessage()
    assert "seconds=" in batch_lines[0].getMessage()
    receipt = RetentionRun.objects.get()
    assert (receipt.status, receipt.batches, receipt.messages) == ("finished", 3, 5)
    assert list(Message.objects.all()) == [young]


def test_files_go_and_storage_bytes_fall_by_exactly_what_was_removed(
    api, org, inbox, mailoutbox, other, clock
):
    gone = [
        outbound(org, inbox, created_at=NOW - 60 * DAY, files={"a.pdf": PDF}),
        outbound(org, inbox, created_at=NOW - 50 * DAY, files={"b": b"12", "c": b"3"}),
        inbound(inbox, created_at=NOW - 45 * DAY),
    ]
    kept = outbound(org, inbox, created_at=NOW - 5 * DAY, files={"d.pdf": PDF})
    csv = Attachment.objects.get(message=gone[2]).size_bytes
    assert csv > 0
    removed_bytes = len(PDF) + 3 + csv
    names = [n for m in gone for n in stored_names(m)]
    warned(org, 30)
    before = storage_used(api, org)

    clock.move_to(NOW + 7 * DAY)
    cleanup.run_cleanup(now=NOW + 7 * DAY)

    assert storage_used(api, org) == before - removed_bytes == len(PDF)
    assert not any(exists(n) for n in names)
    assert all(exists(n) for n in stored_names(kept))
    assert not PendingFileDeletion.objects.exists()
    receipt = RetentionRun.objects.get()
    assert (receipt.messages, receipt.attachments, receipt.bytes) == (
        3,
        4,
        removed_bytes,
    )
    body = api.get(f"/organizations/{org.id}/retention-policy").json()
    assert body["receipts"][0]["messages"] == 3
    assert body["receipts"][0]["bytes"] == removed_bytes


def test_a_crash_between_batches_is_finished_by_the_next_run(
    api, org, inbox, mailoutbox, monkeypatch, clock
):
    messages = [
        outbound(org, inbox, created_at=NOW - (40 + i) * DAY, files={"a.pdf": PDF})
        for i in range(4)
    ]
    names = [n for m in messages for n in stored_names(m)]
    warned(org, 30)
    before = storage_used(api, org)

    # Storage fails after the first batch has committed.
    real_delete = FileSystemStorage.delete
    calls = []

    def flaky_delete(self, name):
        calls.append(name)
        if len(calls) > 1:
            raise ConnectionResetError("storage went away")
        real_delete(self, name)

    monkeypatch.setattr(FileSystemStorage, "delete", flaky_delete)
    with pytest.raises(ConnectionResetError):
        cleanup.run_cleanup(now=NOW + 7 * DAY, batch_size=2)

    # The first batch is gone as a whole, its counter given back once; its
    # files are still named in the pending table, the one removed and the one
    # that could not be.
    assert Message.objects.count() == 2
    assert storage_used(api, org) == before - 2 * len(PDF)
    pending = PendingFileDeletion.objects.values_list("name", flat=True)
    assert sorted(pending) == sorted(calls)
    assert not exists(calls[0]) and exists(calls[1])
    receipt = RetentionRun.objects.get()
    assert (receipt.status, receipt.messages) == ("failed", 2)

    monkeypatch.setattr(FileSystemStorage, "delete", real_delete)
    cleanup.run_cleanup(now=NOW + 8 * DAY, batch_size=2)

    assert Message.objects.count() == 0
    assert storage_used(api, org) == before - 4 * len(PDF)
    assert not PendingFileDeletion.objects.exists()
    assert not any(exists(n) for n in names)
    assert sum(RetentionRun.objects.values_list("messages", flat=True)) == 4


def test_a_crash_inside_a_batch_leaves_the_batch_whole(
    api, org, inbox, mailoutbox, monkeypatch, clock
):
    message = outbound(org, inbox, created_at=NOW - 40 * DAY, files={"a.pdf": PDF})
    warned(org, 30)
    before = storage_used(api, org)

    def broken_credit(**kwargs):
        raise RuntimeError("meter down")

    monkeypatch.setattr(metering, "credit", broken_credit)
    with pytest.raises(RuntimeError):
        cleanup.run_cleanup(now=NOW + 7 * DAY)

    assert Message.objects.filter(pk=message.pk).exists()
    assert Attachment.objects.filter(message=message).exists()
    assert all(exists(n) for n in stored_names(message))
    assert not PendingFileDeletion.objects.exists()
    assert storage_used(api, org) == before


def test_a_file_still_named_by_a_row_is_never_removed(org, inbox, mailoutbox):
    keep = outbound(org, inbox, created_at=NOW, files={"a.pdf": PDF})
    name = keep.attachments.get().file.name
    PendingFileDeletion.objects.create(org=org, name=name, created_at=NOW)

    cleanup.drain_file_deletions(now=NOW)

    assert exists(name)
    assert not PendingFileDeletion.objects.exists()


def test_suspended_orgs_and_orgs_being_exported_are_left_alone(org, inbox, mailoutbox):
    outbound(org, inbox, created_at=NOW - 40 * DAY)
    warned(org, 30)
    later = NOW + 8 * DAY

    Organization.objects.filter(pk=org.pk).update(billing_state="suspended")
    assert cleanup.run_cleanup(now=later)[0].skipped == "suspended"
    Organization.objects.filter(pk=org.pk).update(billing_state="active")

    lease = ExportLease.objects.create(
        org=org, started_at=later, expires_at=later + DAY
    )
    assert cleanup.run_cleanup(now=later)[0].skipped == "export in progress"
    assert Message.objects.count() == 1

    ExportLease.objects.filter(pk=lease.pk).update(finished_at=later)
    cleanup.run_cleanup(now=later)
    assert Message.objects.count() == 0


def test_the_command_dry_run_deletes_nothing(org, inbox, mailoutbox, clock):
    outbound(org, inbox, created_at=NOW - 40 * DAY, files={"a.pdf": PDF})
    warned(org, 30, at=NOW - 8 * DAY)

    out = StringIO()
    call_command("retention_cleanup", "--dry-run", "--org", org.id, stdout=out)
    assert "Would delete 1 messages" in out.getvalue()
    assert Message.objects.count() == 1

    call_command("retention_cleanup", "--org", org.id, stdout=out)
    assert "Deleted 1 messages" in out.getvalue()
    assert Message.objects.count() == 0


def test_a_file_shared_with_a_kept_row_survives_a_batched_run(org, inbox, mailoutbox):
    old = [
        outbound(org, inbox, created_at=NOW - (40 + i) * DAY, files={"a.pdf": PDF})
        for i in range(3)
    ]
    kept = outbound(org, inbox, created_at=NOW, files={"b.pdf": PDF})
    shared = stored_names(old[0])[0]
    others = [n for m in old[1:] for n in stored_names(m)]
    Attachment.objects.filter(message=kept).update(file=shared)
    warned(org, 30)

    cleanup.run_cleanup(now=NOW + 7 * DAY, batch_size=1)

    assert list(Message.objects.all()) == [kept]
    assert exists(shared)
    assert not any(exists(n) for n in others)
    assert not PendingFileDeletion.objects.exists()

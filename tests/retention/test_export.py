import hashlib
import io
import json
import zipfile

import pytest
from django.core.files.storage import default_storage

from agentpost.mail.models import Attachment, Message
from agentpost.orgs.models import ApiKey, Organization
from retention import services
from retention.export import stream_export
from retention.models import ExportLease
from tests.retention.conftest import DAY, NOW, inbound, outbound

HOSTILE = {
    "../../../etc/passwd": b"root:x:0:0",
    "rapport d'été – 2026.pdf": b"%PDF accents",
    "日本語の資料.txt": "こんにちは".encode(),
    "evil\u202egnp.exe": b"MZ disguised",
    "/abs/olute\\win\\path.bin": b"\x00\x01\x02",
    "con.txt": b"reserved on windows",
    "a" * 300 + ".pdf": b"long",
    "..": b"dots",
}


def export(api, org) -> zipfile.ZipFile:
    response = api.get(f"/organizations/{org.id}/export")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert "attachment; filename=" in response["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert archive.testzip() is None
    return archive


@pytest.fixture
def mailbox(org, inbox, new_org):
    services.set_policy(org=org, retention_days=365, now=NOW - 3 * DAY)
    sent = outbound(org, inbox, created_at=NOW - 2 * DAY, files=HOSTILE)
    received = inbound(inbox, created_at=NOW - DAY)
    plain = outbound(org, inbox, created_at=NOW)
    return [sent, received, plain]


def test_the_export_holds_everything_checksummed(api, org, inbox, mailbox, clock):
    archive = export(api, org)
    names = archive.namelist()

    # Every path is plain ASCII from ids and cannot escape the archive.
    for name in names:
        assert name.isascii() and not name.startswith("/")
        assert ".." not in name.split("/") and "\\" not in name
        assert all(part and not part.startswith(".") for part in name.split("/"))
    assert len(names) == len(set(names))

    manifest = json.loads(archive.read("manifest.json"))
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == set(names) - {"manifest.json"}
    for path, entry in listed.items():
        data = archive.read(path)
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()

    attachments = Attachment.objects.filter(org=org)
    assert manifest["counts"] == {
        "messages": 3,
        "inbound_raw": 1,
        "attachments": attachments.count(),
        "attachment_bytes": sum(a.size_bytes for a in attachments),
        "files": len(listed),
    }
    assert manifest["missing_files"] == [] and manifest["checksum_mismatches"] == []

    # Messages, as lines, match the database; attachments match storage.
    lines = [json.loads(line) for line in archive.read("messages.jsonl").splitlines()]
    assert [m["id"] for m in lines] == sorted(m.id for m in mailbox)
    by_id = {m["id"]: m for m in lines}
    for message in Message.objects.filter(org=org):
        line = by_id[message.id]
        assert (line["subject"], line["text"], line["to"]) == (
            message.subject,
            message.text,
            message.to,
        )
        for a in message.attachments.all():
            entry = next(x for x in line["attachments"] if x["id"] == a.id)
            assert entry["filename"] == a.filename
            with default_storage.open(a.file.name, "rb") as handle:
                assert archive.read(entry["path"]) == handle.read()
            assert hashlib.sha256(archive.read(entry["path"])).hexdigest() == a.sha256
    names_exported = {a["filename"] for a in by_id[mailbox[0].id]["attachments"]}
    assert "日本語の資料.txt" in names_exported
    assert "rapport d'été – 2026.pdf" in names_exported

    received = mailbox[1]
    raw_path = by_id[received.id]["raw_path"]
    with default_storage.open(received.raw.name, "rb") as handle:
        assert archive.read(raw_path) == handle.read()
    assert by_id[mailbox[2].id]["raw_path"] is None

    organization = json.loads(archive.read("organization.json"))
    assert organization["id"] == org.id
    assert organization["inboxes"][0]["address"] == inbox.address
    policy = json.loads(archive.read("retention_policy.json"))
    assert policy["retention_days"] == 365


def test_hostile_names_are_kept_as_data_but_never_as_paths(api, org, mailbox, clock):
    archive = export(api, org)
    paths = [n for n in archive.namelist() if n.startswith("attachments/")]
    assert len(paths) == len(HOSTILE) + 1  # plus the inbound CSV
    assert all(p.count("/") == 2 for p in paths)
    suffixes = {p.split("/")[2].split("_", 2)[2] for p in paths}
    assert {"passwd", "rapport_d_ete_2026.pdf", "file.txt", "evil_gnp.exe"} <= suffixes
    assert "a" * 70 + ".pdf" in suffixes


def test_no_secret_is_in_the_export(api, org, owner, new_org, mailbox, clock):
    archive = export(api, org)
    blob = b"".join(archive.read(n) for n in archive.namelist())
    key = ApiKey.objects.get(org=org)
    assert new_org.api_key.token.encode() not in blob
    assert key.hashed_token.encode() not in blob
    assert key.prefix.encode() not in blob
    assert owner.password.encode() not in blob


def test_it_works_for_a_suspended_org_and_not_for_another(
    api, org, other, mailbox, clock
):
    Organization.objects.filter(pk=org.pk).update(billing_state="suspended")
    assert len(json.loads(export(api, org).read("manifest.json"))["files"]) > 3
    assert api.get(f"/organizations/{other.org.id}/export").status_code == 404


def test_a_missing_file_is_reported_not_fatal(api, org, mailbox, clock):
    attachment = mailbox[0].attachments.first()
    default_storage.delete(attachment.file.name)
    manifest = json.loads(export(api, org).read("manifest.json"))
    assert manifest["missing_files"] == [attachment.file.name]
    assert manifest["counts"]["attachments"] == len(HOSTILE)


def test_the_export_holds_off_file_deletion_while_it_streams(org, mailbox):
    stream = stream_export(org_id=org.id, now=NOW)
    next(stream)
    assert services.export_in_progress(org_id=org.id, now=NOW)
    for _ in stream:
        pass
    assert not services.export_in_progress(org_id=org.id, now=NOW)
    assert ExportLease.objects.get().finished_at is not None


def test_an_abandoned_download_ends_its_lease(org, mailbox):
    stream = stream_export(org_id=org.id, now=NOW)
    next(stream)
    stream.close()
    assert not services.export_in_progress(org_id=org.id, now=NOW)


@pytest.mark.django_db(transaction=True)
def test_mail_arriving_during_an_export_is_not_in_it(org, inbox):
    import threading

    from django.db import connection

    first = outbound(org, inbox, created_at=NOW - DAY, files={"a.pdf": b"a"})
    stream = stream_export(org_id=org.id, now=NOW)
    chunks = [next(stream)]

    def arrive():
        # Another connection, as another web process would use; a message
        # stamped before the export's moment must still not appear in it.
        outbound(org, inbox, created_at=NOW - DAY / 2, files={"b.pdf": b"b"})
        connection.close()

    if connection.vendor == "postgresql":
        worker = threading.Thread(target=arrive)
        worker.start()
        worker.join()
        expected = "repeatable_read"
    else:
        expected = "created_at_bound"  # SQLite: one writer, checked above
    chunks.extend(stream)

    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["snapshot"] == expected
    lines = archive.read("messages.jsonl").splitlines()
    assert [json.loads(line)["id"] for line in lines] == [first.id]
    assert manifest["counts"]["attachments"] == 1

"""POST /inbound/ses with SES Received notifications, read back through the API."""

from __future__ import annotations

import base64
import logging

import pytest
from django.test import Client

from agentpost.mail import ses
from agentpost.mail.models import InboundNotification, Inbox, Message
from agentpost.mail.services import create_inbox
from tests.mail.conftest import (
    FIXTURES,
    load,
    post_sns,
    ses_message,
    with_ses_message,
)

pytestmark = pytest.mark.usefixtures("ses_settings")

MIME_01 = (
    FIXTURES / "mime" / "mime_01_multipart_mixed_rfc2231_filenames.eml"
).read_bytes()
MIME_02 = (
    FIXTURES / "mime" / "mime_02_multipart_related_inline_cid_images.eml"
).read_bytes()
ANYMAIL_MIME = (FIXTURES / "mime_anymail_TEST_MIME_MESSAGE.eml").read_bytes()

MIME_01_FIXTURES = [
    "sns_notification__ses_received__"
    "mime_01_multipart_mixed_rfc2231_filenames__utf8__DERIVED.json",
    "sns_notification__ses_received__"
    "mime_01_multipart_mixed_rfc2231_filenames__base64__DERIVED.json",
]
MIME_02_FIXTURES = [
    "sns_notification__ses_received__"
    "mime_02_multipart_related_inline_cid_images__utf8__DERIVED.json",
    "sns_notification__ses_received__"
    "mime_02_multipart_related_inline_cid_images__base64__DERIVED.json",
]
ANYMAIL_FIXTURES = [
    "sns_notification__ses_received__sns_action_utf8__anymail.json",
    "sns_notification__ses_received__sns_action_base64__anymail.json",
]


def nothing_written() -> bool:
    return not InboundNotification.objects.exists() and not Message.objects.exists()


def only_message(api, inbox) -> dict:
    listing = api.get(f"/inboxes/{inbox.id}/messages").json()
    assert len(listing["data"]) == 1, listing
    return api.get(f"/messages/{listing['data'][0]['id']}").json()


def download(api, message: dict, name: str):
    attachment = next(a for a in message["attachments"] if a["filename"] == name)
    response = api.get(f"/messages/{message['id']}/attachments/{attachment['id']}")
    assert response.status_code == 200
    return response, b"".join(response.streaming_content)


@pytest.mark.parametrize("fixture", MIME_01_FIXTURES)
def test_it_stores_mail_with_non_ascii_attachment_names(api, org, signer, fixture):
    inbox = create_inbox(org=org, local_part="invoices")
    response = post_sns(Client(), signer.sign(load(fixture)))
    assert response.status_code == 200
    assert response.json() == {"status": "stored"}

    message = only_message(api, inbox)
    assert message["direction"] == "inbound"
    assert message["from"] == "renee@agents.example.net"
    assert message["cc"] == ["taro@example.jp"]
    assert message["subject"] == "Rechnung März – 3 Anhänge"
    assert "Rechnung für März (€ 49,00)" in message["text"]
    assert [a["filename"] for a in message["attachments"]] == [
        "Rechnung März €.pdf",
        "日本語の利用状況レポート.csv",
        "Fußballer.ppt",  # RFC 2231 in latin-1
    ]

    pdf, body = download(api, message, "Rechnung März €.pdf")
    assert body.startswith(b"%PDF-1.4")
    assert pdf["Content-Disposition"] == (
        "attachment; filename*=utf-8''Rechnung%20M%C3%A4rz%20%E2%82%AC.pdf"
    )
    _, csv = download(api, message, "日本語の利用状況レポート.csv")
    assert csv == b"agent_id,messages_sent,quota\nagt_01,998,1000\nagt_02,1001,1000\n"
    _, ppt = download(api, message, "Fußballer.ppt")
    assert ppt == b"not really a ppt"

    # The raw MIME is kept byte for byte, whichever encoding SNS used.
    stored = Message.objects.get(pk=message["id"])
    assert stored.raw.read() == MIME_01

    usage = api.get(f"/organizations/{org.id}/usage").json()
    assert usage["messages_received"]["current"] == 1
    assert usage["storage_bytes"]["current"] == sum(
        a["size_bytes"] for a in message["attachments"]
    )
    assert usage["storage_bytes"]["current"] == len(body) + len(csv) + len(ppt)


@pytest.mark.parametrize("fixture", MIME_02_FIXTURES)
def test_it_keeps_inline_cid_images_and_their_content_ids(api, org, signer, fixture):
    inbox = create_inbox(org=org, local_part="support-agent")
    assert post_sns(Client(), signer.sign(load(fixture))).status_code == 200

    message = only_message(api, inbox)
    assert message["subject"] == "Re: run #4411 failed"
    assert 'src="cid:ii_m7x2k9q40"' in message["html"]
    assert "Screenshot of the failing run — see below." in message["text"]
    parts = {
        a["filename"]: (a["content_type"], a["content_id"], a["inline"])
        for a in message["attachments"]
    }
    assert parts == {
        "écran.png": ("image/png", "ii_m7x2k9q40", True),
        # The logo has no name at all: it is named after its type.
        "attachment.gif": ("image/gif", "logo@agentpost.example", True),
        "run-4411.log": ("text/plain", "", False),
    }
    _, png = download(api, message, "écran.png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    _, gif = download(api, message, "attachment.gif")
    assert gif.startswith(b"GIF89a")
    _, log = download(api, message, "run-4411.log")
    assert b"reason=quota_exceeded" in log
    assert Message.objects.get(pk=message["id"]).raw.read() == MIME_02


@pytest.mark.parametrize("fixture", ANYMAIL_FIXTURES)
def test_it_stores_the_anymail_shaped_notifications(api, org, signer, fixture):
    inbox = Inbox.objects.create(org=org, address="inbound@example.com")
    assert post_sns(Client(), signer.sign(load(fixture))).status_code == 200

    message = only_message(api, inbox)
    assert message["from"] == "from@example.org"
    assert message["subject"] == "Test inbound message"
    assert message["text"].strip() == "It's a body…"
    assert message["html"].strip() == '<div dir="ltr">It\'s a body…</div>'
    assert Message.objects.get().raw.read() == ANYMAIL_MIME


def test_the_bare_aws_docs_notification_stores_without_an_encoding(api, org, signer):
    # AWS's example has no "encoding" in its action: SES's default is UTF8.
    inbox = Inbox.objects.create(org=org, address="recipient@example.com")
    envelope = with_ses_message(
        load("sns_notification__plain_hello_world__aws_docs.json"),
        load("ses_received__sns_action__aws_docs.json"),
    )
    envelope["TopicArn"] = "arn:aws:sns:us-west-2:123456789012:MyTopic"
    assert post_sns(Client(), signer.sign(envelope)).json() == {"status": "stored"}
    message = only_message(api, inbox)
    assert message["subject"] == "Example subject"
    assert message["text"].strip() == "Example content"


def test_a_redelivery_is_stored_once(api, org, signer):
    inbox = create_inbox(org=org, local_part="invoices")
    envelope = signer.sign(load(MIME_01_FIXTURES[0]))
    assert post_sns(Client(), envelope).json() == {"status": "stored"}
    again = post_sns(Client(), envelope)
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate"}

    assert len(api.get(f"/inboxes/{inbox.id}/messages").json()["data"]) == 1
    usage = api.get(f"/organizations/{org.id}/usage").json()
    assert usage["messages_received"]["current"] == 1


def test_a_concurrent_duplicate_that_passed_the_first_check_stores_nothing(
    api, org, signer, monkeypatch
):
    create_inbox(org=org, local_part="invoices")
    envelope = signer.sign(load(MIME_01_FIXTURES[1]))
    assert post_sns(Client(), envelope).json() == {"status": "stored"}

    # The second delivery raced the first past the "seen before?" check: the
    # unique SNS message id is what stops it.
    real_filter = InboundNotification.objects.filter

    class RacingQuerySet:
        def __init__(self, *args, **kwargs):
            self.queryset = real_filter(*args, **kwargs)

        def exists(self):
            return False

    monkeypatch.setattr(InboundNotification.objects, "filter", RacingQuerySet)
    assert post_sns(Client(), envelope).json() == {"status": "duplicate"}
    monkeypatch.undo()

    assert Message.objects.count() == 1
    assert InboundNotification.objects.count() == 1
    usage = api.get(f"/organizations/{org.id}/usage").json()
    assert usage["messages_received"]["current"] == 1


def test_fixtures_that_share_a_message_id_are_one_delivery_unless_renamed(org, signer):
    # Trap kept in the fixtures: the anymail files all use one SNS MessageId.
    Inbox.objects.create(org=org, address="inbound@example.com")
    utf8, base64_ = (load(name) for name in ANYMAIL_FIXTURES)
    assert utf8["MessageId"] == base64_["MessageId"]
    assert post_sns(Client(), signer.sign(utf8)).json() == {"status": "stored"}
    assert post_sns(Client(), signer.sign(base64_)).json() == {"status": "duplicate"}
    fresh = signer.sign(base64_, MessageId="a-fresh-id")
    assert post_sns(Client(), fresh).json() == {"status": "stored"}
    assert Message.objects.count() == 2


def test_mail_for_two_inboxes_reaches_both_orgs(api, org, other, other_api, signer):
    mine = create_inbox(org=org, local_part="invoices")
    theirs = create_inbox(org=other.org, local_part="billing")
    notification = ses_message(load(MIME_01_FIXTURES[0]))
    recipients = ["invoices@inbox.agentpost.example", "billing@inbox.agentpost.example"]
    notification["receipt"]["recipients"] = recipients
    envelope = signer.sign(with_ses_message(load(MIME_01_FIXTURES[0]), notification))
    assert post_sns(Client(), envelope).json() == {"status": "stored"}

    assert only_message(api, mine)["subject"] == "Rechnung März – 3 Anhänge"
    assert only_message(other_api, theirs)["subject"] == "Rechnung März – 3 Anhänge"
    for client, org_id in ((api, org.id), (other_api, other.org.id)):
        usage = client.get(f"/organizations/{org_id}/usage").json()
        assert usage["messages_received"]["current"] == 1


def test_recipients_fall_back_to_the_destination_and_ignore_case(api, org, signer):
    inbox = create_inbox(org=org, local_part="invoices")
    notification = ses_message(load(MIME_01_FIXTURES[0]))
    del notification["receipt"]["recipients"]
    notification["mail"]["destination"] = ["Invoices@Inbox.AgentPost.Example"]
    envelope = signer.sign(with_ses_message(load(MIME_01_FIXTURES[0]), notification))
    assert post_sns(Client(), envelope).json() == {"status": "stored"}
    assert only_message(api, inbox)["from"] == "renee@agents.example.net"


def test_mail_for_an_unknown_recipient_is_kept_for_staff(api, org, signer, caplog):
    caplog.set_level(logging.WARNING, logger="agentpost.mail.ses")
    response = post_sns(Client(), signer.sign(load(MIME_01_FIXTURES[1])))
    assert response.status_code == 200
    assert response.json() == {"status": "unrouted"}

    record = InboundNotification.objects.get()
    assert record.status == "unrouted"
    assert record.recipients == ["invoices@inbox.agentpost.example"]
    assert record.raw.read() == MIME_01
    assert not Message.objects.exists()
    assert "unrouted" in caplog.text
    assert "invoices@inbox.agentpost.example" in caplog.text
    usage = api.get(f"/organizations/{org.id}/usage").json()
    assert usage["messages_received"]["current"] == 0


def test_unrouted_mail_is_stored_when_processed_again_after_the_inbox_exists(
    api, org, signer, django_capture_on_commit_callbacks
):
    post_sns(Client(), signer.sign(load(MIME_01_FIXTURES[0])))
    record = InboundNotification.objects.get()
    raw_name = record.raw.name
    inbox = create_inbox(org=org, local_part="invoices")

    from tests.conftest import CURRENT_TIME

    with django_capture_on_commit_callbacks(execute=True):
        assert ses.process_again(record_id=record.pk, now=CURRENT_TIME) == "stored"
    message = only_message(api, inbox)
    assert message["subject"] == "Rechnung März – 3 Anhänge"
    record.refresh_from_db()
    assert record.message_id == message["id"]
    assert not record.raw
    assert not record.raw.storage.exists(raw_name)  # the message has the copy
    # Processing again is not a second delivery.
    assert ses.process_again(record_id=record.pk, now=CURRENT_TIME) == "stored"
    assert Message.objects.count() == 1


@pytest.mark.parametrize(
    "fixture",
    [
        "sns_notification__ses_received__s3_action_no_content__anymail.json",
        "sns_notification__ses_received__mime_04_oversized__s3_action__DERIVED.json",
    ],
)
def test_mail_in_s3_is_recorded_as_not_fetched_when_s3_is_off(
    org, signer, fixture, caplog
):
    create_inbox(org=org, local_part="archive-agent")
    Inbox.objects.create(org=org, address="inbound@example.com")
    caplog.set_level(logging.WARNING, logger="agentpost.mail.ses")
    response = post_sns(Client(), signer.sign(load(fixture)))
    assert response.status_code == 200
    assert response.json() == {"status": "not_fetched"}

    action = ses_message(load(fixture))["receipt"]["action"]
    where = f"s3://{action['bucketName']}/{action['objectKey']}"
    record = InboundNotification.objects.get()
    assert record.status == "not_fetched"
    assert where in record.detail
    assert "SES_INBOUND_S3_ENABLED" in record.detail
    assert record.notification["ses"]["receipt"]["action"]["objectKey"]
    assert where in caplog.text and "not_fetched" in caplog.text
    assert not Message.objects.exists()


def test_a_broken_content_encoding_is_kept_as_failed(org, signer):
    create_inbox(org=org, local_part="invoices")
    notification = ses_message(load(MIME_01_FIXTURES[1]))
    notification["receipt"]["action"]["encoding"] = "ROT13"
    envelope = signer.sign(with_ses_message(load(MIME_01_FIXTURES[1]), notification))
    assert post_sns(Client(), envelope).json() == {"status": "failed"}
    record = InboundNotification.objects.get()
    assert "ROT13" in record.detail
    # Nothing is lost: the content stays on the record.
    assert base64.b64decode(record.notification["ses"]["content"]) == MIME_01


HOSTILE_MIME = b"""\
From: mallory@example.net
To: invoices@inbox.agentpost.example
Subject: names
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: text/plain

see attached
--b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="../../../etc/passwd"

one
--b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename*=utf-8''evil%00name%0D%0A.txt

two
--b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename*=utf-8''invoice%E2%80%AEfdp.exe

three
--b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="CON.txt"

four
--b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="report.pdf"

five
--b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="REPORT.pdf"

six
--b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename=""

seven
--b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="LONGNAME.bin"

eight
--b--
""".replace(b"LONGNAME", b"x" * 400).replace(b"\n", b"\r\n")


def test_hostile_attachment_names_are_stored_and_served_safely(api, org, signer):
    inbox = create_inbox(org=org, local_part="invoices")
    notification = ses_message(load(MIME_01_FIXTURES[1]))
    notification["content"] = base64.b64encode(HOSTILE_MIME).decode()
    envelope = signer.sign(with_ses_message(load(MIME_01_FIXTURES[1]), notification))
    assert post_sns(Client(), envelope).json() == {"status": "stored"}

    message = only_message(api, inbox)
    names = [a["filename"] for a in message["attachments"]]
    assert names[:7] == [
        "passwd",
        "evil name .txt",
        "invoice fdp.exe",
        "_CON.txt",
        "report.pdf",
        "REPORT (2).pdf",
        "attachment.bin",  # an empty name, named after its type
    ]
    assert names[7] == "x" * 196 + ".bin"
    contents = [b"one", b"two", b"three", b"four", b"five", b"six", b"seven", b"eight"]
    for attachment, content in zip(message["attachments"], contents, strict=True):
        response = api.get(f"/messages/{message['id']}/attachments/{attachment['id']}")
        assert b"".join(response.streaming_content).strip() == content
        disposition = response["Content-Disposition"]
        assert disposition.startswith("attachment; ")
        assert not any(c in disposition for c in "\r\n\x00/\\\u202e")
        assert response["Content-Type"] == "application/octet-stream"


def test_text_bodies_use_plain_newlines(api, org, signer):
    inbox = create_inbox(org=org, local_part="invoices")
    post_sns(Client(), signer.sign(load(MIME_01_FIXTURES[0])))
    assert "\r" not in only_message(api, inbox)["text"]


def test_the_stored_record_does_not_keep_a_second_copy_of_the_content(org, signer):
    create_inbox(org=org, local_part="invoices")
    post_sns(Client(), signer.sign(load(MIME_01_FIXTURES[0])))
    record = InboundNotification.objects.get()
    assert record.status == "stored"
    assert "content" not in record.notification["ses"]
    assert record.notification["sns"]["TopicArn"].endswith(":agentpost-inbound")
    assert "Signature" not in record.notification["sns"]

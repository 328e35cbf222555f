"""Mail SES stored in S3, fetched through boto3 from a stand-in on loopback."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import pytest
from django.test import Client

from agentpost.mail import s3, ses
from agentpost.mail.models import InboundNotification, Message
from agentpost.mail.services import create_inbox
from tests.conftest import CURRENT_TIME
from tests.mail.conftest import FIXTURES, load, post_sns, ses_message, with_ses_message

pytestmark = pytest.mark.usefixtures("ses_settings")

OVERSIZED = "sns_notification__ses_received__mime_04_oversized__s3_action__DERIVED.json"
MIME_04 = (
    FIXTURES / "mime" / "mime_04_oversized_200kb_over_sns_limit.eml"
).read_bytes()
OBJECT = "/agentpost-inbound-raw/inbound/e9850d48830b39866af5420d5a66350d51561eab"


class StandInS3(BaseHTTPRequestHandler):
    objects: dict[str, bytes] = {}
    requests: list[tuple[str, str]] = []

    def do_GET(self):  # noqa: N802 (the http.server name)
        path = unquote(self.path.split("?")[0])
        self.requests.append((path, self.headers.get("Authorization", "")))
        body = self.objects.get(path)
        if body is None:
            error = b"<Error><Code>NoSuchKey</Code><Message>nope</Message></Error>"
            self.send_response(404)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        self.send_response(200)
        self.send_header("Content-Type", "message/rfc822")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def s3_server(settings, monkeypatch):
    # Credentials from the environment, so boto3 never looks further (no
    # instance metadata, no config files).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    StandInS3.objects = {OBJECT: MIME_04}
    StandInS3.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInS3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.SES_INBOUND_S3_ENABLED = True
    settings.SES_INBOUND_S3_REGION = "us-east-1"
    settings.SES_INBOUND_S3_ENDPOINT_URL = f"http://127.0.0.1:{server.server_port}"
    s3._client.cache_clear()
    yield StandInS3
    server.shutdown()
    server.server_close()
    s3._client.cache_clear()


@pytest.fixture
def inbox(org):
    return create_inbox(org=org, local_part="archive-agent")


def test_oversized_mail_is_fetched_from_s3_and_stored(
    api, org, inbox, signer, s3_server
):
    response = post_sns(Client(), signer.sign(load(OVERSIZED)))
    assert response.json() == {"status": "stored"}
    assert [path for path, _ in s3_server.requests] == [OBJECT]
    assert s3_server.requests[0][1].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"
    )

    listing = api.get(f"/inboxes/{inbox.id}/messages").json()["data"]
    message = api.get(f"/messages/{listing[0]['id']}").json()
    assert message["subject"] == "200KB attachment"
    (attachment,) = message["attachments"]
    assert attachment["filename"] == "blob.bin"
    assert attachment["size_bytes"] == 150000
    blob = api.get(f"/messages/{message['id']}/attachments/{attachment['id']}")
    assert len(b"".join(blob.streaming_content)) == 150000
    assert Message.objects.get().raw.read() == MIME_04

    usage = api.get(f"/organizations/{org.id}/usage").json()
    assert usage["messages_received"]["current"] == 1
    assert usage["storage_bytes"]["current"] == 150000


def test_a_redelivery_does_not_fetch_again(inbox, signer, s3_server):
    envelope = signer.sign(load(OVERSIZED))
    post_sns(Client(), envelope)
    assert post_sns(Client(), envelope).json() == {"status": "duplicate"}
    assert len(s3_server.requests) == 1


def test_a_missing_object_is_recorded_as_not_fetched(inbox, signer, s3_server):
    s3_server.objects = {}
    response = post_sns(Client(), signer.sign(load(OVERSIZED)))
    assert response.json() == {"status": "not_fetched"}
    record = InboundNotification.objects.get()
    assert "NoSuchKey" in record.detail
    assert not Message.objects.exists()


def test_an_object_over_the_size_limit_is_not_fetched(
    inbox, signer, s3_server, settings
):
    settings.SES_INBOUND_MAX_MESSAGE_BYTES = 1000
    response = post_sns(Client(), signer.sign(load(OVERSIZED)))
    assert response.json() == {"status": "not_fetched"}
    assert "larger than 1000 bytes" in InboundNotification.objects.get().detail


def test_mail_encrypted_with_kms_is_not_fetched(inbox, signer, s3_server):
    notification = ses_message(load(OVERSIZED))
    notification["receipt"]["action"]["kmsKeyArn"] = "arn:aws:kms:us-east-1:1:key/x"
    envelope = signer.sign(with_ses_message(load(OVERSIZED), notification))
    assert post_sns(Client(), envelope).json() == {"status": "not_fetched"}
    assert "KMS" in InboundNotification.objects.get().detail
    assert s3_server.requests == []


def test_not_fetched_mail_is_stored_once_s3_is_turned_on(
    api, inbox, signer, settings, s3_server
):
    settings.SES_INBOUND_S3_ENABLED = False
    post_sns(Client(), signer.sign(load(OVERSIZED)))
    record = InboundNotification.objects.get()
    assert record.status == "not_fetched"
    assert s3_server.requests == []
    assert not Message.objects.exists()

    # Staff turn S3 on and process it again (the admin action does this).
    settings.SES_INBOUND_S3_ENABLED = True
    assert ses.process_again(record_id=record.pk, now=CURRENT_TIME) == "stored"
    listing = api.get(f"/inboxes/{inbox.id}/messages").json()["data"]
    assert [m["subject"] for m in listing] == ["200KB attachment"]

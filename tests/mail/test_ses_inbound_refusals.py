"""What POST /inbound/ses refuses: each answer is a clear 4xx and writes nothing."""

from __future__ import annotations

import base64
import json

import pytest
from django.test import Client

from agentpost.mail.models import InboundNotification, Message
from agentpost.mail.services import create_inbox
from tests.mail.conftest import (
    FIXTURES,
    INBOUND_TOPICS,
    load,
    load_http,
    post_sns,
    with_ses_message,
)

pytestmark = pytest.mark.usefixtures("ses_settings")

MIME_01_UTF8 = (
    "sns_notification__ses_received__"
    "mime_01_multipart_mixed_rfc2231_filenames__utf8__DERIVED.json"
)
ENVELOPES = sorted(p.name for p in FIXTURES.glob("sns_*.json"))
CAPTURED_REQUESTS = sorted(p.name for p in FIXTURES.glob("sns_*.http"))


@pytest.fixture
def inbox(org):
    # Every inbox a fixture could reach, so a wrongly accepted post would store.
    create_inbox(org=org, local_part="invoices")
    create_inbox(org=org, local_part="support-agent")
    return create_inbox(org=org, local_part="archive-agent")


def assert_refused(response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"]["type"] == error_type
    assert body["error"]["message"]
    assert not InboundNotification.objects.exists()
    assert not Message.objects.exists()


def test_there_is_an_envelope_for_every_kind_of_fixture():
    assert len(ENVELOPES) == 15
    assert len(CAPTURED_REQUESTS) == 3


@pytest.mark.parametrize("fixture", ENVELOPES)
def test_every_fixture_as_published_is_refused_unsigned(inbox, fixture, sns_hosts):
    envelope = load(fixture)
    response = post_sns(Client(), envelope)
    expected = (
        "invalid_signature"
        if envelope["TopicArn"] in INBOUND_TOPICS
        else "topic_not_allowed"
    )
    assert_refused(response, 403, expected)
    # Whatever the verifier asked the SNS stand-in for, it was an SNS host.
    assert all(url.startswith("https://sns.") for url in sns_hosts.requested)


@pytest.mark.parametrize("capture", CAPTURED_REQUESTS)
def test_every_captured_request_as_published_is_refused_unsigned(inbox, capture):
    headers, envelope = load_http(capture)
    sns_headers = {k: v for k, v in headers.items() if k.startswith("x-amz-sns-")}
    response = post_sns(Client(), envelope, sns_headers)
    assert_refused(response, 403, "invalid_signature")


@pytest.mark.parametrize("capture", CAPTURED_REQUESTS)
def test_captured_requests_resigned_pass_the_header_checks(inbox, signer, capture):
    headers, envelope = load_http(capture)
    sns_headers = {k: v for k, v in headers.items() if k.startswith("x-amz-sns-")}
    response = post_sns(Client(), signer.sign(envelope), sns_headers)
    if envelope["Type"] == "Notification":
        # "Hello world!" is signed and on an allowed topic, but it is no mail.
        assert_refused(response, 400, "invalid_notification")
    else:
        assert response.status_code == 200


def test_a_misrouted_ses_delivery_event_is_refused(inbox, signer):
    envelope = load(
        "sns_notification__ses_delivery_event_misrouted_to_inbound__anymail.json"
    )
    # As published: a topic nobody allowed.
    assert_refused(post_sns(Client(), envelope), 403, "topic_not_allowed")
    # Even signed and on an allowed topic, a sending event is not inbound mail.
    envelope["TopicArn"] = "arn:aws:sns:us-east-1:111111111111:SES_Inbound"
    response = post_sns(Client(), signer.sign(envelope))
    assert_refused(response, 400, "unsupported_notification")
    assert "Delivery" in response.json()["error"]["message"]


@pytest.mark.parametrize("kind", ["Bounce", "Complaint", "Delivery"])
def test_sending_notifications_and_events_are_refused(inbox, signer, kind):
    for message in ({"notificationType": kind}, {"eventType": kind, "mail": {}}):
        envelope = with_ses_message(load(MIME_01_UTF8), message)
        response = post_sns(Client(), signer.sign(envelope))
        assert_refused(response, 400, "unsupported_notification")


@pytest.mark.parametrize(
    "fixture",
    [
        "sns_notification__ses_topic_validation_plaintext_message__anymail.json",
        "sns_notification__plain_hello_world__aws_docs.json",
    ],
)
def test_a_plain_text_message_is_refused(inbox, signer, fixture):
    response = post_sns(Client(), signer.sign(load(fixture)))
    assert_refused(response, 400, "invalid_notification")


def test_aws_published_example_that_is_not_json_is_refused(inbox, signer):
    text = (
        FIXTURES / "ses_received__s3_action_alert__aws_docs.VERBATIM_INVALID_JSON.txt"
    )
    envelope = {**load(MIME_01_UTF8), "Message": text.read_text()}
    response = post_sns(Client(), signer.sign(envelope))
    assert_refused(response, 400, "invalid_notification")


def test_its_fixed_copy_is_recorded_as_not_fetched(inbox, signer):
    envelope = with_ses_message(
        load(MIME_01_UTF8), load("ses_received__s3_action_alert__aws_docs__FIXED.json")
    )
    response = post_sns(Client(), signer.sign(envelope))
    assert response.json() == {"status": "not_fetched"}
    assert "s3://my-S3-bucket/email" in InboundNotification.objects.get().detail


@pytest.mark.parametrize(
    "message",
    [
        [],
        "just a string",
        {"notificationType": "Received"},
        {"notificationType": "Received", "mail": "x", "receipt": {}},
    ],
)
def test_a_received_notification_without_its_parts_is_refused(inbox, signer, message):
    envelope = with_ses_message(load(MIME_01_UTF8), message)
    response = post_sns(Client(), signer.sign(envelope))
    assert_refused(response, 400, "invalid_notification")


def test_a_signed_message_on_another_topic_is_refused_without_fetching(
    inbox, signer, sns_hosts
):
    envelope = signer.sign(
        load(MIME_01_UTF8), TopicArn="arn:aws:sns:us-east-1:999999999999:someone-else"
    )
    assert_refused(post_sns(Client(), envelope), 403, "topic_not_allowed")
    assert sns_hosts.requested == []


def test_no_topic_is_allowed_by_default(inbox, signer, settings):
    settings.SES_INBOUND_TOPIC_ARNS = []
    response = post_sns(Client(), signer.sign(load(MIME_01_UTF8)))
    assert_refused(response, 403, "topic_not_allowed")


def test_a_message_changed_after_signing_is_refused(inbox, signer):
    envelope = signer.sign(load(MIME_01_UTF8))
    notification = json.loads(envelope["Message"])
    notification["receipt"]["recipients"] = ["support-agent@inbox.agentpost.example"]
    envelope["Message"] = json.dumps(notification)
    assert_refused(post_sns(Client(), envelope), 403, "invalid_signature")


@pytest.mark.parametrize(
    "field", ["MessageId", "Timestamp", "TopicArn", "Subject", "Type"]
)
def test_changing_any_signed_field_breaks_the_signature(inbox, signer, field, settings):
    envelope = signer.sign(load(MIME_01_UTF8))
    changed = {
        "MessageId": "00000000-0000-4000-8000-00000000dead",
        "Timestamp": "2025-03-06T03:33:36.532Z",
        "TopicArn": "arn:aws:sns:us-east-1:111111111111:SES_Inbound",
        "Subject": "Something else",
        "Type": "SubscriptionConfirmation",
    }[field]
    envelope[field] = changed
    response = post_sns(Client(), envelope)
    assert response.status_code in (400, 403)
    assert not InboundNotification.objects.exists()
    assert not Message.objects.exists()


def test_dropping_the_subject_breaks_the_signature(inbox, signer):
    envelope = signer.sign(load(MIME_01_UTF8))
    del envelope["Subject"]
    assert_refused(post_sns(Client(), envelope), 403, "invalid_signature")


def test_a_message_signed_by_a_stranger_is_refused(inbox, stranger):
    envelope = stranger.sign(load(MIME_01_UTF8))
    assert_refused(post_sns(Client(), envelope), 403, "invalid_signature")


def test_a_well_formed_but_wrong_signature_is_refused(inbox, sns_hosts):
    envelope = load(MIME_01_UTF8)
    envelope["Signature"] = base64.b64encode(b"\x00" * 256).decode()
    assert_refused(post_sns(Client(), envelope), 403, "invalid_signature")
    # The trusted certificate did not verify it, so the one it names was asked
    # for; the stand-in for SNS does not have it.
    assert sns_hosts.requested == [envelope["SigningCertURL"]]


@pytest.mark.parametrize("version", ["", "3", None, 1])
def test_an_unknown_signature_version_is_refused(inbox, signer, version):
    envelope = signer.sign(load(MIME_01_UTF8))
    envelope["SignatureVersion"] = version
    assert_refused(post_sns(Client(), envelope), 403, "invalid_signature")


@pytest.mark.parametrize("signature", ["", "not base64 at all!", None, 12])
def test_a_missing_or_garbled_signature_is_refused(inbox, signer, signature):
    envelope = signer.sign(load(MIME_01_UTF8))
    envelope["Signature"] = signature
    assert_refused(post_sns(Client(), envelope), 403, "invalid_signature")


def test_the_message_type_header_must_agree_with_the_body(inbox, signer):
    envelope = signer.sign(load(MIME_01_UTF8))
    wrong = {"x-amz-sns-message-type": "SubscriptionConfirmation"}
    assert_refused(post_sns(Client(), envelope, wrong), 400, "invalid_request")
    missing = {"x-amz-sns-message-type": None}
    assert_refused(post_sns(Client(), envelope, missing), 400, "invalid_request")


def test_the_topic_header_must_agree_with_the_body(inbox, signer):
    envelope = signer.sign(load(MIME_01_UTF8))
    header = {"x-amz-sns-topic-arn": "arn:aws:sns:us-east-1:111111111111:other"}
    assert_refused(post_sns(Client(), envelope, header), 400, "invalid_request")


@pytest.mark.parametrize("message_type", ["", "Notice", None])
def test_an_unknown_message_type_is_refused(inbox, signer, message_type):
    envelope = signer.sign(load(MIME_01_UTF8))
    envelope["Type"] = message_type
    headers = {"x-amz-sns-message-type": message_type or ""}
    assert_refused(post_sns(Client(), envelope, headers), 400, "invalid_request")


@pytest.mark.parametrize("body", [b'{"Type": "Notification",', b"\xff\xfe", b""])
def test_a_body_that_is_not_json_is_refused(inbox, body):
    response = post_sns(Client(), body, {"x-amz-sns-message-type": "Notification"})
    assert_refused(response, 400, "invalid_json")


@pytest.mark.parametrize("body", [b"[]", b'"Notification"', b"42", b"null"])
def test_a_body_that_is_not_an_object_is_refused(inbox, body):
    response = post_sns(Client(), body, {"x-amz-sns-message-type": "Notification"})
    assert_refused(response, 400, "invalid_json")


def test_a_body_over_the_limit_is_413(inbox, signer, settings):
    envelope = signer.sign(load(MIME_01_UTF8))
    settings.SES_INBOUND_MAX_BODY_BYTES = len(json.dumps(envelope)) - 1
    assert_refused(post_sns(Client(), envelope), 413, "payload_too_large")
    settings.SES_INBOUND_MAX_BODY_BYTES = len(json.dumps(envelope))
    assert post_sns(Client(), envelope).status_code == 200


def test_a_too_long_message_id_is_refused(inbox, signer):
    envelope = signer.sign(load(MIME_01_UTF8), MessageId="x" * 101)
    assert_refused(post_sns(Client(), envelope), 400, "invalid_request")


def test_only_post_is_allowed(inbox):
    response = Client().get("/inbound/ses")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response.json()["error"]["type"] == "method_not_allowed"


def test_an_api_key_is_not_needed_and_not_enough(inbox, api):
    # The endpoint is authenticated by the SNS signature alone.
    response = api.post("/inbound/ses", load(MIME_01_UTF8))
    assert response.status_code == 400
    assert not Message.objects.exists()


def test_a_signature_version_that_is_not_a_string_is_refused(client, settings):
    import json

    settings.SES_INBOUND_TOPIC_ARNS = [
        "arn:aws:sns:us-east-1:111111111111:agentpost-inbound"
    ]
    envelope = {
        "Type": "Notification",
        "MessageId": "m-1",
        "TopicArn": "arn:aws:sns:us-east-1:111111111111:agentpost-inbound",
        "Message": "{}",
        "Timestamp": "2026-01-01T00:00:00.000Z",
        "SignatureVersion": ["1"],
        "Signature": "AAAA",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/x.pem",
    }
    response = client.post(
        "/inbound/ses",
        json.dumps(envelope),
        content_type="text/plain",
        HTTP_X_AMZ_SNS_MESSAGE_TYPE="Notification",
    )
    assert response.status_code == 403

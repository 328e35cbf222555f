"""SNS signature checks: versions, fetched certificates and where they may come from."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.test import Client

from agentpost.mail import sns
from agentpost.mail.models import InboundNotification, Message
from agentpost.mail.services import create_inbox
from tests.mail.conftest import Signer, load, make_signer, post_sns

pytestmark = pytest.mark.usefixtures("ses_settings")

MIME_01 = (
    "sns_notification__ses_received__"
    "mime_01_multipart_mixed_rfc2231_filenames__base64__DERIVED.json"
)
SNS_CERT_URL = (
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc123.pem"
)


@pytest.fixture
def inbox(org):
    return create_inbox(org=org, local_part="invoices")


@pytest.fixture
def nothing_trusted(settings):
    # As in production: the certificate must come from SNS.
    settings.SNS_TRUSTED_CERT_FILES = []


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize(
    "fixture",
    [
        MIME_01,
        "sns_subscription_confirmation__aws_docs.json",
        "sns_unsubscribe_confirmation__aws_docs.json",
    ],
)
def test_both_signature_versions_verify_for_every_type(
    inbox, signer, version, fixture, monkeypatch
):
    monkeypatch.setattr("agentpost.mail.tasks.confirm_sns_subscription.delay", print)
    response = post_sns(Client(), signer.sign(load(fixture), version=version))
    assert response.status_code == 200, response.content
    assert InboundNotification.objects.count() == 1


def test_a_notification_without_a_subject_verifies(inbox, signer):
    envelope = load(MIME_01)
    del envelope["Subject"]
    assert post_sns(Client(), signer.sign(envelope)).json() == {"status": "stored"}


def test_a_certificate_from_an_sns_host_is_fetched_once(
    inbox, signer, nothing_trusted, sns_hosts
):
    sns_hosts.certificates[SNS_CERT_URL] = signer.pem
    first = signer.sign(load(MIME_01), SigningCertURL=SNS_CERT_URL)
    second = signer.sign(load(MIME_01), SigningCertURL=SNS_CERT_URL, MessageId="m2")
    assert post_sns(Client(), first).json() == {"status": "stored"}
    assert post_sns(Client(), second).json() == {"status": "stored"}
    assert sns_hosts.requested == [SNS_CERT_URL]
    assert Message.objects.count() == 2


def test_a_certificate_that_did_not_sign_it_is_refused(
    inbox, signer, stranger, nothing_trusted, sns_hosts
):
    sns_hosts.certificates[SNS_CERT_URL] = stranger.pem
    envelope = signer.sign(load(MIME_01), SigningCertURL=SNS_CERT_URL)
    response = post_sns(Client(), envelope)
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "invalid_signature"
    assert not Message.objects.exists()


def test_an_sns_url_that_serves_no_pem_is_refused(
    inbox, signer, nothing_trusted, sns_hosts
):
    sns_hosts.certificates[SNS_CERT_URL] = b"<html>not a certificate</html>"
    envelope = signer.sign(load(MIME_01), SigningCertURL=SNS_CERT_URL)
    assert post_sns(Client(), envelope).status_code == 403


@pytest.mark.parametrize(
    "url",
    [
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc123.pem",
        "https://evil.example.com/SimpleNotificationService-abc123.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-a.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/SimpleNotificationService-a.pem",
        "https://user@sns.us-east-1.amazonaws.com/SimpleNotificationService-abc123.pem",
        "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-abc123.pem",
        "https://sns.us-east-1.amazonaws.com/other.pem",
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-a.pem?x=1",
        "https://sqs.us-east-1.amazonaws.com/SimpleNotificationService-abc123.pem",
        "https://127.0.0.1/SimpleNotificationService-abc123.pem",
        "file:///etc/ssl/certs/ca-certificates.crt",
        "",
        None,
    ],
)
def test_a_certificate_is_never_fetched_from_anywhere_else(
    inbox, signer, nothing_trusted, sns_hosts, url
):
    sns_hosts.certificates[url] = signer.pem
    envelope = signer.sign(load(MIME_01), SigningCertURL=url)
    response = post_sns(Client(), envelope)
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "invalid_signature"
    assert sns_hosts.requested == []
    assert not InboundNotification.objects.exists()


def test_the_china_regions_are_sns_hosts_too(inbox, signer, nothing_trusted, sns_hosts):
    url = "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-x.pem"
    sns_hosts.certificates[url] = signer.pem
    envelope = signer.sign(load(MIME_01), SigningCertURL=url)
    assert post_sns(Client(), envelope).json() == {"status": "stored"}


def test_an_expired_certificate_is_refused(inbox, nothing_trusted, sns_hosts):
    key, pem = make_signer("old", not_after=datetime(2020, 1, 1, tzinfo=UTC))
    expired = Signer(key, pem)
    sns_hosts.certificates[SNS_CERT_URL] = pem
    envelope = expired.sign(load(MIME_01), SigningCertURL=SNS_CERT_URL)
    assert post_sns(Client(), envelope).status_code == 403
    assert not Message.objects.exists()


def test_an_unreachable_certificate_asks_sns_to_retry(
    inbox, signer, nothing_trusted, sns_hosts, monkeypatch
):
    def unreachable(url):
        raise sns.CertificateUnavailable("timed out")

    monkeypatch.setattr(sns, "download_certificate", unreachable)
    envelope = signer.sign(load(MIME_01), SigningCertURL=SNS_CERT_URL)
    response = post_sns(Client(), envelope)
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "certificate_unavailable"
    assert not InboundNotification.objects.exists()

    # The failure was not cached: once SNS answers, the retry is stored.
    monkeypatch.setattr(sns, "download_certificate", lambda url: signer.pem)
    assert post_sns(Client(), envelope).json() == {"status": "stored"}


def test_a_trusted_file_that_does_not_exist_is_skipped(
    inbox, signer, settings, tmp_path
):
    settings.SNS_TRUSTED_CERT_FILES = [str(tmp_path / "missing.pem")]
    response = post_sns(Client(), signer.sign(load(MIME_01)))
    assert response.status_code == 403


def test_the_canonical_string_follows_aws(signer):
    envelope = signer.sign(load("sns_subscription_confirmation__aws_docs.json"))
    assert (
        sns.canonical_string(envelope)
        == (
            "Message\n" + envelope["Message"] + "\n"
            "MessageId\n165545c9-2a5c-472c-8df2-7ff2be2b3b1b\n"
            "SubscribeURL\n" + envelope["SubscribeURL"] + "\n"
            "Timestamp\n2012-04-26T20:45:04.751Z\n"
            "Token\n2336412f37...\n"
            "TopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\n"
            "Type\nSubscriptionConfirmation\n"
        ).encode()
    )

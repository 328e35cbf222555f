"""
SNS signing for tests: a key and a self-signed certificate made at test time.

The signer here is written from AWS's description of the canonical string, apart
from ``agentpost.mail.sns``, so a mistake there cannot hide behind the same
mistake here. Nothing is ever fetched: ``download_certificate`` is replaced by a
stand-in that serves only the certificates a test hands it.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from agentpost.mail import sns

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ses"
# The topics of the fixtures that carry SES inbound mail.
INBOUND_TOPICS = [
    "arn:aws:sns:us-east-1:111111111111:agentpost-inbound",
    "arn:aws:sns:us-east-1:111111111111:SES_Inbound",
    "arn:aws:sns:us-west-2:123456789012:SES_Notifications",
    "arn:aws:sns:us-west-2:123456789012:MyTopic",
]
MAIL_DOMAIN = "inbox.agentpost.example"


def make_signer(common_name: str, *, not_after: datetime | None = None):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2000, 1, 1, tzinfo=UTC))
        .not_valid_after(not_after or datetime(2100, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


def canonical(envelope: dict) -> bytes:
    if envelope["Type"] == "Notification":
        keys = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        keys = [
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]
    return "".join(f"{k}\n{envelope[k]}\n" for k in keys if k in envelope).encode()


class Signer:
    def __init__(self, key, pem: bytes) -> None:
        self.key = key
        self.pem = pem

    def sign(self, envelope: dict, *, version: str = "1", **changes) -> dict:
        """Return ``envelope`` with ``changes``, as SNS would sign it."""
        envelope = {**envelope, **changes}
        # Some fixtures are trimmed; a real SNS message always has these.
        envelope.setdefault("Timestamp", "2025-03-06T03:33:35.532Z")
        envelope.setdefault(
            "SigningCertURL",
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
        )
        envelope["SignatureVersion"] = version
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(canonical(envelope), padding.PKCS1v15(), algorithm)
        envelope["Signature"] = base64.b64encode(signature).decode()
        return envelope


@pytest.fixture(scope="session")
def _signing_material():
    return make_signer("AgentPost test SNS"), make_signer("Someone else")


@pytest.fixture
def signer(_signing_material, tmp_path) -> Signer:
    (key, pem), _ = _signing_material
    (tmp_path / "sns-test-cert.pem").write_bytes(pem)
    return Signer(key, pem)


@pytest.fixture
def stranger(_signing_material) -> Signer:
    """A key nobody trusts."""
    _, (key, pem) = _signing_material
    return Signer(key, pem)


class CertificateServer:
    """Stands in for the SNS hosts: serves what a test puts here, records asks."""

    def __init__(self) -> None:
        self.certificates: dict[str, bytes] = {}
        self.requested: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.requested.append(url)
        if url not in self.certificates:
            raise sns.InvalidMessage("The SigningCertURL does not serve a certificate.")
        return self.certificates[url]


@pytest.fixture(autouse=True)
def sns_hosts(monkeypatch) -> CertificateServer:
    server = CertificateServer()
    monkeypatch.setattr(sns, "download_certificate", server)
    sns.fetch_certificate.cache_clear()
    yield server
    sns.fetch_certificate.cache_clear()


@pytest.fixture
def ses_settings(settings, signer, tmp_path):
    settings.SES_INBOUND_TOPIC_ARNS = list(INBOUND_TOPICS)
    settings.SNS_TRUSTED_CERT_FILES = [str(tmp_path / "sns-test-cert.pem")]
    settings.SES_INBOUND_S3_ENABLED = False
    settings.SES_INBOUND_DEMO_ENABLED = False
    settings.AGENTPOST_MAIL_DOMAIN = MAIL_DOMAIN
    return settings


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def load_http(name: str) -> tuple[dict, dict]:
    """Return the headers and the JSON body of a captured ``.http`` request."""
    head, _, body = (FIXTURES / name).read_text().partition("\n\n")
    headers = {}
    for line in head.splitlines()[1:]:
        field, _, value = line.partition(":")
        headers[field.strip().lower()] = value.strip()
    return headers, json.loads(body)


def ses_message(envelope: dict) -> dict:
    return json.loads(envelope["Message"])


def with_ses_message(envelope: dict, message: dict) -> dict:
    return {**envelope, "Message": json.dumps(message)}


def post_sns(client, envelope: dict | str | bytes, headers: dict | None = None):
    """POST like SNS does: a text/plain JSON body and x-amz-sns-* headers.

    ``headers`` adds or (with None) removes headers; the message type header
    is taken from the envelope unless given.
    """
    body = envelope if isinstance(envelope, (str, bytes)) else json.dumps(envelope)
    sent = {}
    if isinstance(envelope, dict) and "Type" in envelope:
        sent["x-amz-sns-message-type"] = envelope["Type"]
    sent.update(headers or {})
    extra = {
        "HTTP_" + name.upper().replace("-", "_"): value
        for name, value in sent.items()
        if value is not None
    }
    return client.post(
        "/inbound/ses", body, content_type="text/plain; charset=utf-8", **extra
    )

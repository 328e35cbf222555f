"""
Signed SES notifications for local demos (``manage.py ses_inbound``).

The key is made on first use in SES_INBOUND_DEMO_DIR and never leaves the
machine; its certificate is trusted only where SES_INBOUND_DEMO_ENABLED says so
(see settings). The certificate URL it signs with is on a host that is not
SNS's, so a server that does not trust the demo certificate refuses these
messages without fetching anything.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from datetime import datetime, timedelta
from email import policy
from email.parser import BytesParser
from email.utils import getaddresses
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from agentpost.mail import sns

DEMO_CERT_URL = "https://agentpost-demo.invalid/SimpleNotificationService-demo.pem"
DEMO_CERT_VALIDITY = timedelta(days=3650)


def ensure_demo_key(directory: Path, *, now: datetime) -> rsa.RSAPrivateKey:
    """Return the demo signing key in ``directory``, making it and its cert once."""
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    if key_path.exists() and cert_path.exists():
        return serialization.load_pem_private_key(key_path.read_bytes(), None)

    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AgentPost SES demo")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + DEMO_CERT_VALIDITY)
        .sign(key, hashes.SHA256())
    )
    # The key is written private and first: a certificate without its key
    # would be trusted for nothing.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key


def received_notification(
    *, raw: bytes, recipients: list[str], topic_arn: str, now: datetime
) -> dict:
    """Return an SES ``Received`` notification carrying ``raw`` as BASE64 content."""
    message = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
    senders = getaddresses([str(v) for v in message.get_all("From", [])])
    timestamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    return {
        "notificationType": "Received",
        "mail": {
            "timestamp": timestamp,
            "source": senders[0][1] if senders else "",
            "messageId": uuid.uuid4().hex,
            "destination": recipients,
            "commonHeaders": {"subject": str(message.get("Subject", ""))},
        },
        "receipt": {
            "timestamp": timestamp,
            "recipients": recipients,
            "action": {"type": "SNS", "topicArn": topic_arn, "encoding": "BASE64"},
        },
        "content": base64.b64encode(raw).decode(),
    }


def signed_envelope(
    *, ses_notification: dict, topic_arn: str, key: rsa.RSAPrivateKey, now: datetime
) -> dict:
    """Wrap ``ses_notification`` in an SNS Notification signed with ``key`` (v2)."""
    envelope = {
        "Type": sns.NOTIFICATION,
        "MessageId": str(uuid.uuid4()),
        "TopicArn": topic_arn,
        "Subject": "Amazon SES Email Receipt Notification",
        "Message": json.dumps(ses_notification),
        "Timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{now.microsecond // 1000:03d}Z",
        "SignatureVersion": "2",
        "SigningCertURL": DEMO_CERT_URL,
    }
    signature = key.sign(
        sns.canonical_string(envelope), padding.PKCS1v15(), hashes.SHA256()
    )
    envelope["Signature"] = base64.b64encode(signature).decode()
    return envelope

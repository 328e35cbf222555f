"""HTTPS deliveries connect to the checked address but verify the name."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agentpost.events import services, targets
from agentpost.events.models import Delivery
from tests.conftest import CURRENT_TIME
from tests.events.conftest import Receiver

NAME = "hooks.example.test"


@pytest.fixture
def cert_files(tmp_path):
    """A self-signed certificate for NAME, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_receiver(cert_files):
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, cert_files))
    receiver = Receiver(tls=context)
    receiver.thread.start()
    yield receiver
    receiver.stop.set()
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def hook(api, org, dns, tls_receiver, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS = True
    dns.names[NAME] = ["127.0.0.1"]
    dns.names["wrong-name.example.test"] = ["127.0.0.1"]

    def make(host: str):
        response = api.post(
            "/webhooks", {"url": f"https://{host}:{tls_receiver.port}/"}
        )
        assert response.status_code == 201
        tls_receiver.secrets.append(response.json()["secret"])
        return response.json()

    return make


def deliver_once(org):
    with time_machine.travel(CURRENT_TIME, tick=False):
        services.emit_event(org=org, type="message.sent", data={}, now=CURRENT_TIME)
        delivery = Delivery.objects.get()
        services.deliver(delivery_id=delivery.id, now=CURRENT_TIME)
    return delivery.attempts.get()


def test_it_delivers_over_https_to_the_name_it_checked(
    hook, org, tls_receiver, cert_files, monkeypatch
):
    monkeypatch.setattr(targets.certifi, "where", lambda: str(cert_files[0]))
    hook(NAME)
    attempt = deliver_once(org)
    assert attempt.succeeded, attempt.error
    [got] = tls_receiver.requests
    assert got.verified is not None
    assert got.headers["host"] == f"{NAME}:{tls_receiver.port}"


def test_an_untrusted_certificate_fails_the_attempt(hook, org, tls_receiver):
    hook(NAME)
    attempt = deliver_once(org)
    assert not attempt.succeeded
    assert "CERTIFICATE_VERIFY_FAILED" in attempt.error
    assert tls_receiver.requests == []


def test_a_certificate_for_another_name_fails_the_attempt(
    hook, org, tls_receiver, cert_files, monkeypatch
):
    # Trusted, and served from the right address, but not for the URL's name.
    monkeypatch.setattr(targets.certifi, "where", lambda: str(cert_files[0]))
    hook("wrong-name.example.test")
    attempt = deliver_once(org)
    assert not attempt.succeeded
    assert "wrong-name.example.test" in attempt.error
    assert tls_receiver.requests == []

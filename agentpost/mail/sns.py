"""
Verifying Amazon SNS messages, as AWS documents it for HTTP/S subscribers.

A message is trusted only when its signature verifies against a certificate that
is either one of SNS_TRUSTED_CERT_FILES (local demos and tests sign with their
own key) or was fetched over https from a host matching SNS_CERT_HOST_PATTERN.
Fetched certificates are kept in a small in-process cache: AWS rotates them
rarely, and a process that restarts simply fetches again.

The signature covers a canonical string of chosen fields, so any other field of
the envelope (SigningCertURL, UnsubscribeURL, ...) is unsigned and is checked
on its own before use.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import re
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from django.conf import settings

logger = logging.getLogger(__name__)

NOTIFICATION = "Notification"
SUBSCRIPTION_CONFIRMATION = "SubscriptionConfirmation"
UNSUBSCRIBE_CONFIRMATION = "UnsubscribeConfirmation"
MESSAGE_TYPES = (NOTIFICATION, SUBSCRIPTION_CONFIRMATION, UNSUBSCRIBE_CONFIRMATION)

# The fields each type signs, in the order AWS puts them in the canonical string.
_SIGNED_FIELDS = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    SUBSCRIPTION_CONFIRMATION: (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED_FIELDS[UNSUBSCRIBE_CONFIRMATION] = _SIGNED_FIELDS[SUBSCRIPTION_CONFIRMATION]
_OPTIONAL_FIELDS = {"Subject"}

_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
_CERT_PATH = re.compile(r"^/SimpleNotificationService-[A-Za-z0-9_-]+\.pem$")
CERT_FETCH_TIMEOUT_SECONDS = 5
CERT_MAX_BYTES = 16 * 1024
CERT_CACHE_SIZE = 16


class InvalidMessage(Exception):
    """The envelope is malformed or its signature does not verify (a 4xx)."""


class CertificateUnavailable(Exception):
    """The signing certificate could not be fetched just now (worth a retry)."""


def canonical_string(envelope: dict) -> bytes:
    """Return the bytes SNS signed for ``envelope``."""
    fields = _SIGNED_FIELDS.get(envelope.get("Type"))
    if fields is None:
        raise InvalidMessage(f"Unknown SNS message type {envelope.get('Type')!r}.")
    parts = []
    for name in fields:
        value = envelope.get(name)
        if value is None and name in _OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str):
            raise InvalidMessage(f"The SNS field {name} is missing or not a string.")
        parts.append(f"{name}\n{value}\n")
    return "".join(parts).encode()


def check_sns_url(url: object, *, what: str) -> str:
    """Return ``url`` if it is https on an SNS host, else raise InvalidMessage."""
    if not isinstance(url, str):
        raise InvalidMessage(f"The {what} is missing.")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme != "https"
        or parts.username is not None
        or parts.password is not None
        or port not in (None, 443)
        or not re.fullmatch(settings.SNS_CERT_HOST_PATTERN, parts.hostname or "")
    ):
        raise InvalidMessage(f"The {what} is not an https URL of an SNS host.")
    return url


def verify_message(envelope: dict, *, now: datetime) -> None:
    """Raise InvalidMessage unless ``envelope`` carries a valid SNS signature.

    Raises CertificateUnavailable when the certificate could not be fetched
    for a reason that may pass (a timeout, a 5xx from SNS).
    """
    version = envelope.get("SignatureVersion")
    hash_class = _HASHES.get(version) if isinstance(version, str) else None
    if hash_class is None:
        raise InvalidMessage("The SignatureVersion is missing or not 1 or 2.")
    try:
        signature = base64.b64decode(envelope.get("Signature") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidMessage("The Signature is not base64.") from None
    if not signature:
        raise InvalidMessage("The message is not signed.")
    signed = canonical_string(envelope)

    for certificate in trusted_certificates():
        if _verifies(certificate, signature, signed, hash_class(), now=now):
            return

    url = check_sns_url(envelope.get("SigningCertURL"), what="SigningCertURL")
    if not _CERT_PATH.match(urlsplit(url).path) or urlsplit(url).query:
        raise InvalidMessage("The SigningCertURL does not name an SNS certificate.")
    certificate = fetch_certificate(url)
    if not _verifies(certificate, signature, signed, hash_class(), now=now):
        raise InvalidMessage("The signature does not verify.")


def _verifies(
    certificate: x509.Certificate,
    signature: bytes,
    signed: bytes,
    algorithm: hashes.HashAlgorithm,
    *,
    now: datetime,
) -> bool:
    if not (certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc):
        return False
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        key.verify(signature, signed, padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        return False
    return True


def trusted_certificates() -> list[x509.Certificate]:
    """Return the certificates of SNS_TRUSTED_CERT_FILES that exist."""
    certificates = []
    for name in settings.SNS_TRUSTED_CERT_FILES:
        path = Path(name)
        try:
            # Keyed by mtime, so a demo certificate made after start-up is seen.
            certificates.append(_load_certificate_file(path, path.stat().st_mtime_ns))
        except FileNotFoundError:
            continue
    return certificates


@functools.lru_cache(maxsize=CERT_CACHE_SIZE)
def _load_certificate_file(path: Path, mtime_ns: int) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@functools.lru_cache(maxsize=CERT_CACHE_SIZE)
def fetch_certificate(url: str) -> x509.Certificate:
    """Return the certificate at ``url`` (checked by the caller), cached.

    Failures are not cached (lru_cache keeps only returned values).
    """
    pem = download_certificate(url)
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise InvalidMessage("The SigningCertURL is not a PEM certificate.") from None


def download_certificate(url: str) -> bytes:
    """Fetch the PEM at ``url``; the one place that talks to SNS for a certificate."""
    logger.info("fetching SNS signing certificate url=%s", url)
    try:
        with requests.get(
            url, timeout=CERT_FETCH_TIMEOUT_SECONDS, allow_redirects=False, stream=True
        ) as response:
            body = b""
            for chunk in response.iter_content(4096):
                body += chunk
                if len(body) > CERT_MAX_BYTES:
                    break
    except requests.RequestException as exc:
        raise CertificateUnavailable(str(exc)) from exc
    if response.status_code >= 500:
        raise CertificateUnavailable(f"SNS answered {response.status_code}")
    if response.status_code != 200 or len(body) > CERT_MAX_BYTES:
        raise InvalidMessage("The SigningCertURL does not serve a certificate.")
    return body

"""
Webhook signing secrets: made, encrypted at rest, and used to sign.

A secret is ``whsec_`` and the base64 of 32 random bytes, the form Standard
Webhooks libraries accept. It is stored encrypted with Fernet under a key derived
from ``WEBHOOKS_ENCRYPTION_KEY`` (SECRET_KEY by default); the keys in
``WEBHOOKS_ENCRYPTION_KEY_FALLBACKS`` still decrypt, so that key can be changed.
A secret is never logged, shown in the admin, or put in an error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime

from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    """Return a fresh signing secret, ``whsec_<base64>``."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _fernet_key(material: str) -> bytes:
    # A purpose-bound key, so the webhook key is never SECRET_KEY itself.
    derived = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"agentpost.events webhook signing secrets",
    ).derive(material.encode())
    return base64.urlsafe_b64encode(derived)


def _fernet() -> MultiFernet:
    materials = [settings.WEBHOOKS_ENCRYPTION_KEY]
    materials += list(settings.WEBHOOKS_ENCRYPTION_KEY_FALLBACKS)
    return MultiFernet([Fernet(_fernet_key(m)) for m in materials])


def encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode()


def decrypt(token: str) -> str:
    return _fernet().decrypt(token.encode()).decode()


def sign(*, secret: str, msg_id: str, timestamp: datetime, body: bytes) -> str:
    """Return ``v1,<base64 HMAC-SHA256>`` of ``id.timestamp.body``.

    This is the Standard Webhooks signature.
    """
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{int(timestamp.timestamp())}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()

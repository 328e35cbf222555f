from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db import transaction

from agentpost.orgs.models import (
    ApiKey,
    AuditEntry,
    Membership,
    Organization,
    hash_token,
)


@dataclass
class NewApiKey:
    key: ApiKey
    token: str  # shown once, never stored


def create_api_key(*, org: Organization, name: str = "", created_by=None) -> NewApiKey:
    """Create an API key for the org and return it with its secret token."""
    token = ApiKey.generate_token()
    key = ApiKey.objects.create(
        org=org,
        name=name,
        prefix=token[:11],
        hashed_token=hash_token(token),
        created_by=created_by,
    )
    return NewApiKey(key=key, token=token)


def revoke_api_key(*, key: ApiKey, now: datetime, actor=None) -> bool:
    """Revoke the key; return False if it was already revoked."""
    revoked = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
        revoked_at=now
    )
    if revoked:
        record_audit(
            org=key.org,
            action="api_key.revoked",
            new={"key": key.pk},
            now=now,
            actor=actor,
        )
    return bool(revoked)


@dataclass
class NewOrg:
    org: Organization
    owner: object
    api_key: NewApiKey


@transaction.atomic
def create_org(
    *,
    name: str,
    owner_email: str,
    owner_password: str | None = None,
    plan: str = "free",
) -> NewOrg:
    """Create an org with its owner (reusing an existing user) and a first API key."""
    User = get_user_model()
    owner = User.objects.filter(email__iexact=owner_email).first()
    if owner is None:
        owner = User.objects.create_user(
            username=owner_email.lower(), email=owner_email, password=owner_password
        )
    elif owner_password:
        owner.set_password(owner_password)
        owner.save(update_fields=["password"])

    org = Organization.objects.create(name=name, plan=plan, billing_email=owner_email)
    Membership.objects.create(user=owner, org=org, role=Membership.Role.OWNER)
    api_key = create_api_key(org=org, name="default", created_by=owner)
    return NewOrg(org=org, owner=owner, api_key=api_key)


def record_audit(
    *,
    org: Organization,
    action: str,
    now: datetime,
    old=None,
    new=None,
    actor=None,
    reason: str = "",
) -> AuditEntry:
    """Write one audit row. ``actor`` is a User, an ApiKey, an ApiClient or None."""
    user = key = None
    if isinstance(actor, ApiKey):
        key = actor
    elif getattr(actor, "key", None) is not None and isinstance(actor.key, ApiKey):
        key = actor.key
    elif actor is not None and getattr(actor, "is_authenticated", False):
        user = actor
    return AuditEntry.objects.create(
        org=org,
        actor_user=user,
        actor_key=key,
        action=action,
        old=old,
        new=new,
        reason=reason,
        created_at=now,
    )

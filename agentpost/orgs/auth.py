from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Q
from django.utils import timezone
from rest_framework import authentication, exceptions

from agentpost.orgs.models import ApiKey, Organization, hash_token

# last_used_at is written at most this often per key, so that busy keys do not
# turn every request into a write on one hot row.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass
class ApiClient:
    """The caller behind an API key: DRF's ``request.user`` for API requests."""

    org: Organization
    key: ApiKey
    is_authenticated: bool = True

    @property
    def pk(self) -> str:
        return self.key.pk


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer ap_...``: the key's org is the caller's org."""

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise exceptions.AuthenticationFailed(
                "Use the header 'Authorization: Bearer <api key>'."
            )
        key = (
            ApiKey.objects.active()
            .select_related("org")
            .filter(hashed_token=hash_token(token.strip()))
            .first()
        )
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API key.")

        now = timezone.now()
        if key.last_used_at is None or key.last_used_at < now - LAST_USED_RESOLUTION:
            ApiKey.objects.filter(pk=key.pk).filter(
                Q(last_used_at__isnull=True)
                | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
            ).update(last_used_at=now)
        return ApiClient(org=key.org, key=key), key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'

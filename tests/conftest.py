"""
Shared test setup: settings for tests, three personas and an API client.

- ``owner``: owns ``org`` and holds its API key.
- ``member``: a member of ``org`` who may look but not change.
- ``outsider``: owns ``other_org``; must never see anything of ``org``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from django.test import Client

from agentpost.orgs.models import Membership
from agentpost.orgs.services import create_org

CURRENT_TIME = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _test_settings(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.AGENTPOST_MAIL_DOMAIN = "agentpost.test"
    # The personas log in with passwords; a slow hash would cost ~0.3 s a test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    }
    from agentpost.celery import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield


class ApiClient(Client):
    """A Django test client that speaks JSON with a bearer key."""

    def __init__(self, token: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.token = token

    def _auth(self, extra: dict) -> dict:
        if self.token and "HTTP_AUTHORIZATION" not in extra:
            extra["HTTP_AUTHORIZATION"] = f"Bearer {self.token}"
        return extra

    def get(self, path, data=None, **extra):
        return super().get(path, data, **self._auth(extra))

    def delete(self, path, **extra):
        return super().delete(path, **self._auth(extra))

    def post(self, path, data=None, content_type="application/json", **extra):
        if data is not None and not isinstance(data, (str, bytes)):
            data = json.dumps(data)
        return super().post(path, data, content_type=content_type, **self._auth(extra))

    def patch(self, path, data=None, content_type="application/json", **extra):
        if data is not None and not isinstance(data, (str, bytes)):
            data = json.dumps(data)
        return super().patch(path, data, content_type=content_type, **self._auth(extra))

    def put(self, path, data=None, content_type="application/json", **extra):
        if data is not None and not isinstance(data, (str, bytes)):
            data = json.dumps(data)
        return super().put(path, data, content_type=content_type, **self._auth(extra))


@pytest.fixture
def new_org(db):
    return create_org(
        name="Acme Agents", owner_email="owner@acme.test", owner_password="pw-owner-1"
    )


@pytest.fixture
def org(new_org):
    return new_org.org


@pytest.fixture
def owner(new_org):
    return new_org.owner


@pytest.fixture
def api(new_org) -> ApiClient:
    return ApiClient(new_org.api_key.token)


@pytest.fixture
def member(org, django_user_model):
    user = django_user_model.objects.create_user(
        username="member@acme.test", email="member@acme.test", password="pw-member-1"
    )
    Membership.objects.create(user=user, org=org, role=Membership.Role.MEMBER)
    return user


@pytest.fixture
def other(db):
    return create_org(
        name="Other Co", owner_email="outsider@other.test", owner_password="pw-out-1"
    )


@pytest.fixture
def other_api(other) -> ApiClient:
    return ApiClient(other.api_key.token)


@pytest.fixture
def inbox(org):
    from agentpost.mail.services import create_inbox

    return create_inbox(org=org, local_part="agent")

import pytest
from django.test import Client


@pytest.fixture
def owner_client(owner) -> Client:
    client = Client()
    client.force_login(owner)
    return client


@pytest.fixture
def member_client(member) -> Client:
    client = Client()
    client.force_login(member)
    return client


@pytest.fixture
def outsider_client(other) -> Client:
    client = Client()
    client.force_login(other.owner)
    return client

"""The SNS handshake: SubscriptionConfirmation and UnsubscribeConfirmation."""

from __future__ import annotations

import pytest
import requests
from django.test import Client

from agentpost.mail import ses
from agentpost.mail.models import InboundNotification
from tests.conftest import CURRENT_TIME
from tests.mail.conftest import load, load_http, post_sns

pytestmark = pytest.mark.usefixtures("ses_settings")

SUBSCRIBE_FIXTURES = [
    "sns_subscription_confirmation__aws_docs.json",
    "sns_subscription_confirmation__anymail.json",
]


class FakeResponse:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


@pytest.fixture
def visits(monkeypatch):
    """Stand in for SNS's SubscribeURL; record each visit."""
    seen: list[str] = []

    def get(url, **kwargs):
        seen.append(url)
        assert kwargs.get("allow_redirects") is False
        return FakeResponse(200)

    monkeypatch.setattr(requests, "get", get)
    return seen


@pytest.mark.parametrize("fixture", SUBSCRIBE_FIXTURES)
def test_it_confirms_a_subscription_to_an_allowed_topic(
    db, signer, visits, fixture, django_capture_on_commit_callbacks
):
    envelope = signer.sign(load(fixture))
    with django_capture_on_commit_callbacks(execute=True):
        response = post_sns(Client(), envelope)
    assert response.status_code == 200
    assert response.json() == {"status": "confirming"}
    assert visits == [envelope["SubscribeURL"]]
    record = InboundNotification.objects.get()
    assert record.sns_type == "SubscriptionConfirmation"
    assert record.status == "confirmed"
    assert "200" in record.detail


def test_the_captured_request_confirms_too(
    db, signer, visits, django_capture_on_commit_callbacks
):
    headers, envelope = load_http("sns_subscription_confirmation__aws_docs.http")
    sns_headers = {k: v for k, v in headers.items() if k.startswith("x-amz-sns-")}
    with django_capture_on_commit_callbacks(execute=True):
        response = post_sns(Client(), signer.sign(envelope), sns_headers)
    assert response.status_code == 200
    assert len(visits) == 1


def test_a_redelivered_confirmation_is_visited_once(
    db, signer, visits, django_capture_on_commit_callbacks
):
    envelope = signer.sign(load(SUBSCRIBE_FIXTURES[0]))
    with django_capture_on_commit_callbacks(execute=True):
        post_sns(Client(), envelope)
        assert post_sns(Client(), envelope).json() == {"status": "duplicate"}
    assert len(visits) == 1


def test_a_subscription_to_another_topic_is_not_confirmed(
    db, signer, visits, settings, django_capture_on_commit_callbacks
):
    settings.SES_INBOUND_TOPIC_ARNS = ["arn:aws:sns:us-east-1:111111111111:mine"]
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post_sns(Client(), signer.sign(load(SUBSCRIBE_FIXTURES[0])))
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "topic_not_allowed"
    assert callbacks == [] and visits == []
    assert not InboundNotification.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com/?Action=ConfirmSubscription",
        "http://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription",
        "https://sns.us-west-2.amazonaws.com.evil.example/?Action=Confirm",
        "https://169.254.169.254/latest/meta-data/",
    ],
)
def test_a_subscribe_url_off_sns_is_never_visited(
    db, signer, visits, url, django_capture_on_commit_callbacks
):
    envelope = signer.sign(load(SUBSCRIBE_FIXTURES[0]), SubscribeURL=url)
    with django_capture_on_commit_callbacks(execute=True):
        response = post_sns(Client(), envelope)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request"
    assert visits == []
    assert not InboundNotification.objects.exists()


def test_an_unsigned_confirmation_is_not_visited(
    db, visits, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = post_sns(Client(), load(SUBSCRIBE_FIXTURES[0]))
    assert response.status_code == 403
    assert visits == []


def test_a_failed_confirmation_is_recorded_and_can_be_retried(db, signer, monkeypatch):
    monkeypatch.setattr(
        "agentpost.mail.tasks.confirm_sns_subscription.delay", lambda pk: None
    )
    post_sns(Client(), signer.sign(load(SUBSCRIBE_FIXTURES[0])))
    record = InboundNotification.objects.get()

    def down(url, **kwargs):
        raise requests.ConnectionError("no route")

    monkeypatch.setattr(requests, "get", down)
    assert ses.confirm_subscription(record_id=record.pk, now=CURRENT_TIME) == "failed"
    record.refresh_from_db()
    assert "no route" in record.detail

    monkeypatch.setattr(requests, "get", lambda url, **kw: FakeResponse(200))
    assert (
        ses.confirm_subscription(record_id=record.pk, now=CURRENT_TIME) == "confirmed"
    )
    # Done is done: a late duplicate task does not visit again.
    monkeypatch.setattr(requests, "get", down)
    assert (
        ses.confirm_subscription(record_id=record.pk, now=CURRENT_TIME) == "confirmed"
    )


@pytest.mark.parametrize(
    "fixture",
    [
        "sns_unsubscribe_confirmation__aws_docs.json",
        "sns_unsubscribe_confirmation__anymail.json",
    ],
)
def test_an_unsubscribe_is_recorded_and_not_visited(
    db, signer, visits, fixture, caplog, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = post_sns(Client(), signer.sign(load(fixture)))
    assert response.json() == {"status": "unsubscribed"}
    assert visits == []  # visiting it would subscribe again
    record = InboundNotification.objects.get()
    assert record.sns_type == "UnsubscribeConfirmation"
    assert "subscription ended" in caplog.text


def test_the_captured_unsubscribe_request_is_recorded(db, signer, visits):
    headers, envelope = load_http("sns_unsubscribe_confirmation__aws_docs.http")
    sns_headers = {k: v for k, v in headers.items() if k.startswith("x-amz-sns-")}
    response = post_sns(Client(), signer.sign(envelope), sns_headers)
    assert response.json() == {"status": "unsubscribed"}

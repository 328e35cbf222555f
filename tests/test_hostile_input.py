"""
Bad input found by trying to break the API: each is a clear 4xx that stores nothing.
"""

import base64

import pytest

from agentpost.mail.models import Message


def send(api, inbox, **fields):
    body = {"to": ["someone@example.com"], "subject": "Hello", "text": "Hi"}
    body.update(fields)
    return api.post(f"/inboxes/{inbox.id}/messages", body)


def test_a_content_type_with_a_line_break_is_refused(api, inbox):
    attachment = {
        "filename": "a.txt",
        "content_type": "text/plain\r\nX-Evil: 1",
        "content": base64.b64encode(b"hi").decode(),
    }
    response = send(api, inbox, attachments=[attachment])
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {
        "attachments[0].content_type": ["Not a media type such as text/plain."]
    }
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    "subject", ["a\x0bBcc: x@example.com", "a\x0cb", "a\u2028b", "a\x85b"]
)
def test_control_characters_in_a_subject_are_refused(api, inbox, subject):
    response = send(api, inbox, subject=subject)
    assert response.status_code == 400
    assert "subject" in response.json()["error"]["fields"]
    assert not Message.objects.exists()


def test_numbers_are_not_taken_for_text(api, inbox):
    response = send(api, inbox, subject=5)
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"subject": ["Expected a string."]}
    assert api.post("/inboxes", {"local_part": 5}).status_code == 400


def test_deeply_nested_json_is_bad_json(api, inbox):
    response = api.post("/inboxes", "[" * 100_000, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_json"


def test_unicode_digits_in_days_are_refused(api, org):
    response = api.get(f"/organizations/{org.id}/usage/history", {"days": "²"})
    assert response.status_code == 400

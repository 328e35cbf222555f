import base64
import hashlib

from django.core import mail

from agentpost.mail.models import Attachment, Message

PDF = b"%PDF-1.4 pretend report\n" * 10


def send(api, inbox, **fields):
    body = {"to": ["someone@example.com"], "subject": "Hello", "text": "Hi there"}
    body.update(fields)
    return api.post(f"/inboxes/{inbox.id}/messages", body)


def test_it_creates_an_inbox_on_the_mail_domain(api):
    response = api.post("/inboxes", {"local_part": "Support"})
    assert response.status_code == 201
    assert response.json()["address"] == "support@agentpost.test"
    assert response.json()["id"].startswith("inb_")


def test_an_address_can_be_taken_once(api, other_api):
    assert api.post("/inboxes", {"local_part": "sales"}).status_code == 201
    response = other_api.post("/inboxes", {"local_part": "sales"})
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "conflict"


def test_it_sends_a_message_with_an_attachment(
    api, inbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = send(
            api,
            inbox,
            attachments=[
                {
                    "filename": "report.pdf",
                    "content_type": "application/pdf",
                    "content": base64.b64encode(PDF).decode(),
                }
            ],
        )
    assert response.status_code == 202
    body = response.json()
    assert body["id"].startswith("msg_")
    assert body["from"] == "agent@agentpost.test"
    assert body["attachments"][0]["sha256"] == hashlib.sha256(PDF).hexdigest()

    # The worker (eager in tests) hands it to Django's email backend.
    assert len(mail.outbox) == 1
    sent = mail.outbox[0]
    assert sent.to == ["someone@example.com"]
    assert sent.attachments[0][0] == "report.pdf"
    assert sent.attachments[0][1] == PDF
    assert api.get(f"/messages/{body['id']}").json()["status"] == "sent"


def test_the_attachment_downloads_with_a_safe_disposition(api, inbox):
    response = send(
        api,
        inbox,
        attachments=[
            {"filename": "../../etc/passwd", "content": base64.b64encode(b"x").decode()}
        ],
    )
    message = response.json()
    att = message["attachments"][0]
    assert att["filename"] == "passwd"

    download = api.get(f"/messages/{message['id']}/attachments/{att['id']}")
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == b"x"
    assert download["Content-Disposition"] == 'attachment; filename="passwd"'
    stored = Attachment.objects.get(pk=att["id"])
    assert "passwd" not in stored.file.name


def test_it_lists_messages_with_a_cursor(api, inbox):
    ids = [send(api, inbox, subject=f"n{i}").json()["id"] for i in range(5)]
    page = api.get(f"/inboxes/{inbox.id}/messages", {"limit": 2}).json()
    assert [m["id"] for m in page["data"]] == ids[::-1][:2]
    assert page["has_more"] is True
    rest = api.get(
        f"/inboxes/{inbox.id}/messages", {"limit": 10, "cursor": page["next_cursor"]}
    ).json()
    assert [m["id"] for m in rest["data"]] == ids[::-1][2:]
    assert rest["has_more"] is False


def test_malformed_json_is_400_and_stores_nothing(api, inbox):
    response = api.post(
        f"/inboxes/{inbox.id}/messages", '{"to": [', content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_json"
    assert not Message.objects.exists()


def test_unknown_fields_are_refused(api, inbox):
    response = send(api, inbox, reply_to="x@example.com")
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"reply_to": ["Unknown field."]}
    assert not Message.objects.exists()


def test_wrong_types_are_refused(api, inbox):
    response = send(api, inbox, to="someone@example.com")
    assert response.status_code == 400
    assert "to" in response.json()["error"]["fields"]


def test_bad_base64_is_refused(api, inbox):
    response = send(
        api, inbox, attachments=[{"filename": "a.txt", "content": "%%%not base64"}]
    )
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {
        "attachments[0].content": ["Not valid base64."]
    }
    assert not Message.objects.exists()


def test_a_header_injection_in_the_subject_is_refused(api, inbox):
    response = send(api, inbox, subject="Hi\r\nBcc: victim@example.com")
    assert response.status_code == 400
    assert not Message.objects.exists()


def test_a_body_over_the_size_limit_is_413(api, inbox, settings):
    settings.API_MAX_BODY_BYTES = 1000
    response = send(api, inbox, text="x" * 2000)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "payload_too_large"
    assert not Message.objects.exists()


def test_another_orgs_inbox_and_messages_are_404(api, other_api, inbox):
    message_id = send(api, inbox).json()["id"]
    assert send(other_api, inbox).status_code == 404
    assert other_api.get(f"/inboxes/{inbox.id}/messages").status_code == 404
    assert other_api.get(f"/messages/{message_id}").status_code == 404
    assert Message.objects.count() == 1

"""Staff see unrouted and not fetched mail in the admin, and can store it again."""

import pytest
from django.test import Client

from agentpost.mail.models import InboundNotification, Message
from agentpost.mail.services import create_inbox
from tests.mail.conftest import FIXTURES, load, post_sns

pytestmark = pytest.mark.usefixtures("ses_settings")

MIME_01 = (
    "sns_notification__ses_received__"
    "mime_01_multipart_mixed_rfc2231_filenames__base64__DERIVED.json"
)
OVERSIZED = "sns_notification__ses_received__mime_04_oversized__s3_action__DERIVED.json"


@pytest.fixture
def staff(django_user_model) -> Client:
    user = django_user_model.objects.create_superuser(
        "staff@agentpost.test", "staff@agentpost.test", "pw-staff-1"
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer(django_user_model) -> Client:
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(
        "viewer@agentpost.test", "viewer@agentpost.test", "pw-view-1", is_staff=True
    )
    user.user_permissions.add(
        Permission.objects.get(codename="view_inboundnotification")
    )
    client = Client()
    client.force_login(user)
    return client


def test_staff_see_unrouted_mail_with_its_sender_subject_and_raw_mime(staff, signer):
    post_sns(Client(), signer.sign(load(MIME_01)))
    record = InboundNotification.objects.get()

    listing = staff.get("/admin/mail/inboundnotification/?status__exact=unrouted")
    assert listing.status_code == 200
    page = listing.content.decode()
    assert "invoices@inbox.agentpost.example" in page
    # The subject and sender from the SES notification, RFC 2047 decoded.
    assert "Rechnung März – 3 Anhänge" in page
    assert "Renée Müller" in page

    detail = staff.get(f"/admin/mail/inboundnotification/{record.pk}/change/")
    assert detail.status_code == 200
    page = detail.content.decode()
    assert (
        "Content-Disposition: attachment; filename*=utf-8&#x27;&#x27;Rechnung" in page
    )
    assert f"/admin/mail/inboundnotification/{record.pk}/raw/" in page

    raw = staff.get(f"/admin/mail/inboundnotification/{record.pk}/raw/")
    assert raw.status_code == 200
    assert raw["Content-Type"] == "application/octet-stream"
    assert (
        raw.content
        == (
            FIXTURES / "mime" / "mime_01_multipart_mixed_rfc2231_filenames.eml"
        ).read_bytes()
    )


def test_staff_see_where_not_fetched_mail_is(staff, signer):
    post_sns(Client(), signer.sign(load(OVERSIZED)))
    record = InboundNotification.objects.get()
    page = staff.get(f"/admin/mail/inboundnotification/{record.pk}/change/")
    text = page.content.decode()
    assert "s3://agentpost-inbound-raw/inbound/e9850d48830b" in text
    assert "200KB attachment" in text


def test_process_again_stores_unrouted_mail_once_the_inbox_exists(
    staff, org, signer, django_capture_on_commit_callbacks
):
    post_sns(Client(), signer.sign(load(MIME_01)))
    record = InboundNotification.objects.get()
    create_inbox(org=org, local_part="invoices")

    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            "/admin/mail/inboundnotification/",
            {"action": "process_again", "_selected_action": [record.pk]},
            follow=True,
        )
    assert "Stored 1 of 1 selected." in response.content.decode()
    record.refresh_from_db()
    assert record.status == "stored"
    assert Message.objects.get().subject == "Rechnung März – 3 Anhänge"


def test_view_only_staff_cannot_process_again(viewer, org, signer):
    post_sns(Client(), signer.sign(load(MIME_01)))
    record = InboundNotification.objects.get()
    create_inbox(org=org, local_part="invoices")
    assert (
        viewer.get(f"/admin/mail/inboundnotification/{record.pk}/change/").status_code
        == 200
    )
    viewer.post(
        "/admin/mail/inboundnotification/",
        {"action": "process_again", "_selected_action": [record.pk]},
    )
    record.refresh_from_db()
    assert record.status == "unrouted"
    assert not Message.objects.exists()


def test_the_raw_download_is_for_staff_only(signer, api):
    post_sns(Client(), signer.sign(load(MIME_01)))
    record = InboundNotification.objects.get()
    response = Client().get(f"/admin/mail/inboundnotification/{record.pk}/raw/")
    assert response.status_code == 302  # to the admin login
    assert "/admin/login/" in response["Location"]

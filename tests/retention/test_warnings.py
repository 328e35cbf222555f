from io import StringIO

from django.core.management import call_command

from agentpost.events.models import Event
from agentpost.mail.models import Message
from retention import cleanup, services
from retention.models import RetentionNotice
from tests.retention.conftest import DAY, NOW, outbound


def test_it_warns_the_owners_once_with_what_will_go(
    org, owner, member, inbox, mailoutbox
):
    outbound(org, inbox, created_at=NOW - 40 * DAY, files={"a.pdf": b"x" * 1234})
    outbound(org, inbox, created_at=NOW - 31 * DAY)
    outbound(org, inbox, created_at=NOW - 1 * DAY)
    services.set_policy(org=org, retention_days=30, now=NOW)

    services.send_warnings(now=NOW)
    services.send_warnings(now=NOW)
    services.send_warnings(now=NOW + DAY)

    assert len(mailoutbox) == 1
    email = mailoutbox[0]
    assert email.to == [owner.email]  # the member is not an owner
    # The window reaches now: all three go, each once it is 30 days old.
    assert "3 messages" in email.subject
    assert "3 messages with 1.2\xa0KB (1234 bytes)" in email.body
    assert "17 March 2026, 12:00 UTC" in email.body  # NOW + 7 days
    assert f"/organizations/{org.id}/export" in email.body
    assert f"/organizations/{org.id}/retention-policy" in email.body
    html, mimetype = email.alternatives[0]
    assert mimetype == "text/html" and "1234 bytes" in html

    notice = RetentionNotice.objects.get()
    assert notice.sent_at == NOW and notice.delete_after == NOW + 7 * DAY
    event = Event.objects.get(org=org, type="retention.warning")
    assert event.data["messages"] == 3 and event.data["bytes"] == 1234


def test_a_second_worker_with_the_same_view_cannot_claim_the_warning(
    org, inbox, mailoutbox, monkeypatch
):
    outbound(org, inbox, created_at=NOW - 40 * DAY)
    services.set_policy(org=org, retention_days=30, now=NOW)
    stale = services.get_policy(org=org)

    assert services.warn_org(org=org, now=NOW) is not None
    # The second worker read the policy before the first one's claim.
    monkeypatch.setattr(services, "get_policy", lambda org: stale)
    assert services.warn_org(org=org, now=NOW) is None

    assert RetentionNotice.objects.count() == 1
    assert len(mailoutbox) == 1


def test_nothing_is_warned_or_deleted_with_no_policy_or_keep_forever(
    org, inbox, mailoutbox
):
    outbound(org, inbox, created_at=NOW - 4000 * DAY)
    services.send_warnings(now=NOW)
    services.set_policy(org=org, retention_days=None, now=NOW)
    services.send_warnings(now=NOW)
    cleanup.run_cleanup(now=NOW + 30 * DAY)
    assert mailoutbox == [] and Message.objects.count() == 1


def test_a_warning_that_could_not_be_sent_authorises_nothing(
    org, inbox, mailoutbox, monkeypatch
):
    outbound(org, inbox, created_at=NOW - 40 * DAY)
    services.set_policy(org=org, retention_days=30, now=NOW)

    def fail(self, fail_silently=False):
        raise ConnectionRefusedError("smtp down")

    with monkeypatch.context() as patch:
        patch.setattr("django.core.mail.EmailMultiAlternatives.send", fail)
        services.send_warnings(now=NOW)
    notice = RetentionNotice.objects.get()
    assert notice.sent_at is None and notice.delete_after is None

    cleanup.run_cleanup(now=NOW + 10 * DAY)
    assert Message.objects.count() == 1

    # The next run sends it; the notice period starts then.
    services.send_warnings(now=NOW + 10 * DAY)
    assert len(mailoutbox) == 1
    notice.refresh_from_db()
    assert notice.delete_after == NOW + 17 * DAY
    cleanup.run_cleanup(now=NOW + 17 * DAY - DAY / 24)
    assert Message.objects.count() == 1
    cleanup.run_cleanup(now=NOW + 17 * DAY)
    assert Message.objects.count() == 0


def test_an_org_without_owners_is_not_warned_so_nothing_goes(
    org, owner, inbox, mailoutbox
):
    org.memberships.all().delete()
    type(org).objects.filter(pk=org.pk).update(billing_email="")
    outbound(org, inbox, created_at=NOW - 40 * DAY)
    services.set_policy(org=org, retention_days=30, now=NOW)
    services.send_warnings(now=NOW)
    cleanup.run_cleanup(now=NOW + 20 * DAY)
    assert mailoutbox == [] and Message.objects.count() == 1


def test_one_warning_covers_a_window_then_the_next_follows(org, inbox, mailoutbox):
    services.set_policy(org=org, retention_days=90, now=NOW)
    for age in (100, 60, 40):
        outbound(org, inbox, created_at=NOW - age * DAY)

    services.send_warnings(now=NOW)
    first = RetentionNotice.objects.get()
    # 90 days - 7 days notice - 30 days window before now.
    assert first.cutoff == NOW - 53 * DAY and first.messages == 2

    for day in range(1, 30):
        services.send_warnings(now=NOW + day * DAY)
    assert RetentionNotice.objects.count() == 1
    services.send_warnings(now=NOW + 31 * DAY)
    assert RetentionNotice.objects.count() == 2
    assert len(mailoutbox) == 2


def test_the_command_warns_and_its_dry_run_sends_nothing(org, inbox, mailoutbox):
    outbound(org, inbox, created_at=NOW - 40 * DAY)
    services.set_policy(org=org, retention_days=30, now=NOW)

    out = StringIO()
    call_command("retention_warn", "--dry-run", "--org", org.id, stdout=out)
    assert "Would send 1 warnings" in out.getvalue()
    assert mailoutbox == [] and not RetentionNotice.objects.exists()

    call_command("retention_warn", stdout=out)
    assert "Sent 1 warnings" in out.getvalue()
    assert len(mailoutbox) == 1

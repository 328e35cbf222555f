import json
from datetime import timedelta

import pytest
import time_machine
from django.core import mail
from django.core.management import call_command

from agentpost import metering
from agentpost.events import services, targets
from agentpost.events.models import Delivery, WebhookEndpoint
from agentpost.mail.inbound import store_inbound_mail
from agentpost.metering import QuotaExceeded
from tests.conftest import CURRENT_TIME
from tests.events.conftest import Reply

pytestmark = pytest.mark.usefixtures("allow_loopback")

INBOUND_MIME = (
    b"From: Ada <ada@example.com>\r\n"
    b"To: agent@agentpost.test\r\n"
    b"Subject: Quarterly numbers\r\n"
    b"Message-ID: <q1@example.com>\r\n"
    b"Content-Type: text/plain\r\n\r\n"
    b"See attached.\r\n"
)


@pytest.fixture
def clock():
    with time_machine.travel(CURRENT_TIME, tick=False) as traveller:
        yield traveller


@pytest.fixture
def hook(api, receiver, clock):
    """An endpoint registered through the API; the receiver knows its secret."""
    response = api.post("/webhooks", {"url": receiver.url()})
    assert response.status_code == 201, response.json()
    receiver.secrets.append(response.json()["secret"])
    return WebhookEndpoint.objects.get(pk=response.json()["id"])


def emit(org, type=services.MESSAGE_SENT, data=None):
    return services.emit_event(
        org=org, type=type, data=data or {"message_id": "msg_1"}, now=CURRENT_TIME
    )


def deliver_due(now) -> list[str]:
    # The receiver checks webhook-timestamp against its own clock, so the clock
    # moves to ``now`` as well.
    with time_machine.travel(now, tick=False):
        return [
            services.deliver(delivery_id=i, now=now)
            for i in services.due_deliveries(now=now)
        ]


def test_inbound_mail_reaches_the_endpoint_signed(
    hook, org, inbox, receiver, django_capture_on_commit_callbacks
):
    # The whole path: mail arrives, the event commits, the task (eager) delivers.
    with django_capture_on_commit_callbacks(execute=True):
        message = store_inbound_mail(inbox=inbox, raw=INBOUND_MIME, now=CURRENT_TIME)

    assert len(receiver.requests) == 1
    got = receiver.requests[0]
    assert got.verified is not None, "standardwebhooks rejected the signature"
    assert got.verified["type"] == "message.received"
    assert got.verified["org_id"] == org.id
    assert got.verified["data"]["message_id"] == message.id
    assert got.verified["data"]["subject"] == "Quarterly numbers"
    assert got.headers["webhook-id"] == got.verified["id"]
    assert got.headers["webhook-id"].startswith("evt_")
    assert got.headers["webhook-timestamp"] == str(int(CURRENT_TIME.timestamp()))
    assert got.headers["content-type"] == "application/json"
    assert Delivery.objects.get().status == Delivery.Status.SUCCEEDED


def test_a_forged_signature_does_not_verify(hook, org, receiver):
    # Guards the receiver itself: a wrong secret must fail to verify.
    receiver.secrets[:] = ["whsec_" + "A" * 43 + "="]
    emit(org)
    deliver_due(CURRENT_TIME)
    assert receiver.requests and receiver.requests[0].verified is None


def test_it_retries_after_a_500_and_lists_every_attempt(hook, org, api, receiver):
    receiver.reply(Reply(500, b"upstream exploded"), Reply(503))
    event = emit(org)

    assert deliver_due(CURRENT_TIME) == ["pending"]
    delivery = Delivery.objects.get()
    # 5 seconds, give or take the jitter.
    wait = delivery.next_attempt_at - CURRENT_TIME
    assert timedelta(seconds=4.5) <= wait <= timedelta(seconds=5.5)
    assert deliver_due(CURRENT_TIME + timedelta(seconds=4)) == []

    later = CURRENT_TIME + timedelta(seconds=6)
    assert deliver_due(later) == ["pending"]
    delivery.refresh_from_db()
    wait = delivery.next_attempt_at - later
    assert timedelta(minutes=4.5) <= wait <= timedelta(minutes=5.5)

    assert deliver_due(later + timedelta(minutes=6)) == ["succeeded"]
    assert receiver.verified_ids() == [event.id] * 3

    body = api.get(f"/webhooks/{hook.id}/deliveries").json()
    [listed] = body["data"]
    assert listed["status"] == "succeeded"
    assert listed["event_id"] == event.id
    assert listed["payload"]["id"] == event.id
    assert [a["status_code"] for a in listed["attempts"]] == [500, 503, 204]
    assert [a["succeeded"] for a in listed["attempts"]] == [False, False, True]
    assert listed["attempts"][0]["response_excerpt"] == "upstream exploded"
    assert listed["attempts"][0]["error"] == "HTTP 500"
    assert all(a["latency_ms"] is not None for a in listed["attempts"])


def test_a_timeout_is_a_failed_attempt_and_is_retried(
    hook, org, receiver, fast_timeouts
):
    receiver.reply(Reply(200, delay=2.0))
    emit(org)
    assert deliver_due(CURRENT_TIME) == ["pending"]
    attempt = Delivery.objects.get().attempts.get()
    assert attempt.status_code is None
    assert attempt.error == "read timeout after 0.3s"

    assert deliver_due(CURRENT_TIME + timedelta(seconds=6)) == ["succeeded"]


def test_a_refused_connection_is_a_failed_attempt(org, api, clock, receiver):
    url = receiver.url()
    receiver.server.shutdown()
    receiver.server.server_close()
    hook = api.post("/webhooks", {"url": url}).json()
    emit(org)
    assert deliver_due(CURRENT_TIME) == ["pending"]
    attempt = Delivery.objects.get(endpoint_id=hook["id"]).attempts.get()
    assert "refused" in attempt.error.lower()


def test_the_schedule_spans_about_a_day_then_gives_up(hook, org, receiver):
    receiver.reply(*[Reply(500)] * 20)
    emit(org)
    now = CURRENT_TIME
    statuses = []
    while (delivery := Delivery.objects.get()).next_attempt_at:
        now = delivery.next_attempt_at
        statuses.append(services.deliver(delivery_id=delivery.id, now=now))

    assert statuses == ["pending"] * 7 + ["failed"]
    assert len(receiver.requests) == 8
    assert timedelta(hours=24) < now - CURRENT_TIME < timedelta(hours=31)
    delivery.refresh_from_db()
    assert delivery.status == "failed"
    assert delivery.last_error == "HTTP 500"
    # One failed day is not yet sustained failure.
    hook.refresh_from_db()
    assert hook.enabled
    assert mail.outbox == []


def test_sustained_failure_disables_the_endpoint_and_emails_the_owners(
    hook, org, api, receiver, django_capture_on_commit_callbacks
):
    receiver.reply(*[Reply(500)] * 20)
    emit(org)
    assert deliver_due(CURRENT_TIME) == ["pending"]

    # Days later, everything still fails.
    later = CURRENT_TIME + timedelta(days=5, minutes=1)
    services.emit_event(org=org, type="message.sent", data={}, now=later)
    with django_capture_on_commit_callbacks(execute=True):
        statuses = deliver_due(later)
    assert sorted(statuses) == ["failed", "failed"]

    shown = api.get(f"/webhooks/{hook.id}").json()
    assert shown["enabled"] is False
    assert shown["disabled_reason"] == "failing"
    [email] = mail.outbox
    assert email.to == ["owner@acme.test"]
    assert hook.id in email.subject
    assert hook.url in email.body
    assert "HTTP 500" in email.body
    html, mimetype = email.alternatives[0]
    assert mimetype == "text/html"
    assert f"PATCH /webhooks/{hook.id}" in html

    # Nothing further is sent to it, and new events make no deliveries.
    sent = len(receiver.requests)
    emit(org)
    assert deliver_due(later + timedelta(days=1)) == []
    assert len(receiver.requests) == sent

    # The owner fixes it and turns it back on: it starts afresh.
    assert api.patch(f"/webhooks/{hook.id}", {"enabled": True}).status_code == 200
    hook.refresh_from_db()
    assert hook.enabled and hook.failing_since is None and not hook.disabled_reason


def test_a_success_resets_the_failure_run(hook, org, receiver):
    receiver.reply(Reply(500))
    emit(org)
    deliver_due(CURRENT_TIME)
    hook.refresh_from_db()
    assert hook.failing_since == CURRENT_TIME
    deliver_due(CURRENT_TIME + timedelta(minutes=1))
    hook.refresh_from_db()
    assert hook.failing_since is None


def test_every_attempt_counts_as_a_webhook_delivery(hook, org, api, receiver):
    receiver.reply(Reply(500))
    emit(org)
    deliver_due(CURRENT_TIME)
    deliver_due(CURRENT_TIME + timedelta(minutes=1))
    delivery = Delivery.objects.get()
    api.post(f"/webhooks/{hook.id}/deliveries/{delivery.id}/replay")
    deliver_due(CURRENT_TIME + timedelta(minutes=2))

    assert len(receiver.requests) == 3
    usage = api.get(f"/organizations/{org.id}/usage").json()
    assert usage["webhook_deliveries"]["current"] == 3


def test_replay_sends_the_event_again_as_a_new_delivery(hook, org, api, receiver):
    event = emit(org)
    deliver_due(CURRENT_TIME)
    original = Delivery.objects.get()

    response = api.post(f"/webhooks/{hook.id}/deliveries/{original.id}/replay")
    assert response.status_code == 202
    replay = response.json()
    assert replay["replay_of"] == original.id
    assert replay["status"] == "pending"
    assert replay["id"] != original.id

    assert deliver_due(CURRENT_TIME) == ["succeeded"]
    # Same webhook-id: it is the same event.
    assert receiver.verified_ids() == [event.id, event.id]
    listed = api.get(f"/webhooks/{hook.id}/deliveries").json()["data"]
    assert [d["id"] for d in listed] == [replay["id"], original.id]


def test_replay_of_a_disabled_endpoint_is_refused(hook, org, api):
    emit(org)
    delivery = Delivery.objects.get()
    api.patch(f"/webhooks/{hook.id}", {"enabled": False})
    response = api.post(f"/webhooks/{hook.id}/deliveries/{delivery.id}/replay")
    assert response.status_code == 409
    assert Delivery.objects.count() == 1


def test_a_worker_that_dies_after_sending_leads_to_a_retry(
    hook, org, receiver, monkeypatch
):
    event = emit(org)
    real_send = services.send

    def send_then_die(**kwargs):
        real_send(**kwargs)
        raise SystemExit("worker killed")

    monkeypatch.setattr(services, "send", send_then_die)
    with pytest.raises(SystemExit):
        services.deliver(delivery_id=Delivery.objects.get().id, now=CURRENT_TIME)
    monkeypatch.setattr(services, "send", real_send)

    # Until the lease runs out, nobody else takes it.
    assert deliver_due(CURRENT_TIME + timedelta(minutes=4)) == []
    assert deliver_due(CURRENT_TIME + timedelta(minutes=6)) == ["succeeded"]

    assert receiver.verified_ids() == [event.id, event.id]
    lost, retried = Delivery.objects.get().attempts.all()
    assert "worker stopped" in lost.error
    assert retried.succeeded


def test_a_delivery_claimed_twice_is_sent_once(hook, org, receiver):
    emit(org)
    delivery = Delivery.objects.get()
    assert services.deliver(delivery_id=delivery.id, now=CURRENT_TIME) == "succeeded"
    assert services.deliver(delivery_id=delivery.id, now=CURRENT_TIME) == "succeeded"
    assert len(receiver.requests) == 1


def test_a_quota_refusal_defers_the_delivery_to_the_reset(
    hook, org, receiver, monkeypatch
):
    resets_at = CURRENT_TIME + timedelta(days=3)

    class FullMeter:
        def charge(self, **kwargs):
            raise QuotaExceeded(
                counter=kwargs["counter"], limit=10, current=10, resets_at=resets_at
            )

    emit(org)
    monkeypatch.setattr(metering, "_meter", FullMeter())
    assert deliver_due(CURRENT_TIME) == ["pending"]
    delivery = Delivery.objects.get()
    assert delivery.next_attempt_at == resets_at
    assert "limit" in delivery.last_error
    assert delivery.attempt_count == 0
    assert receiver.requests == []

    monkeypatch.undo()
    assert deliver_due(resets_at - timedelta(seconds=1)) == []
    assert deliver_due(resets_at) == ["succeeded"]
    assert len(receiver.requests) == 1


def test_a_suspended_org_waits_but_hears_of_its_suspension(hook, org, receiver):
    org.billing_state = org.BillingState.SUSPENDED
    org.save()
    emit(org)
    suspended = emit(org, type=services.ORG_SUSPENDED, data={})

    assert deliver_due(CURRENT_TIME) == ["succeeded"]
    assert receiver.verified_ids() == [suspended.id]

    # Reinstated: the waiting delivery goes out.
    org.billing_state = org.BillingState.ACTIVE
    org.save()
    pending = Delivery.objects.get(status="pending")
    services.deliver(delivery_id=pending.id, now=CURRENT_TIME)  # due already
    assert len(receiver.requests) == 2


def test_endpoints_get_only_the_types_they_asked_for(api, org, receiver, clock):
    sent_only = api.post(
        "/webhooks", {"url": receiver.url("/sent"), "event_types": ["message.sent"]}
    ).json()
    api.post("/webhooks", {"url": receiver.url("/off"), "enabled": False})
    everything = api.post("/webhooks", {"url": receiver.url("/all")}).json()

    emit(org, type=services.MESSAGE_RECEIVED)
    emit(org, type=services.MESSAGE_SENT)
    deliver_due(CURRENT_TIME)

    paths = sorted(r.path for r in receiver.requests)
    assert paths == ["/all", "/all", "/sent"]
    assert everything["event_types"] == ["*"]
    assert sent_only["event_types"] == ["message.sent"]


def test_an_unknown_event_type_is_refused(org):
    with pytest.raises(ValueError, match="EVENT_TYPES"):
        services.emit_event(org=org, type="message.recieved", data={}, now=CURRENT_TIME)


def test_redirects_are_not_followed(hook, org, receiver):
    receiver.reply(
        Reply(302, headers={"Location": receiver.url("/elsewhere")}), Reply(307)
    )
    emit(org)
    assert deliver_due(CURRENT_TIME) == ["pending"]
    assert [r.path for r in receiver.requests] == ["/hook"]
    attempt = Delivery.objects.get().attempts.get()
    assert attempt.status_code == 302
    assert attempt.error == "redirect not followed"


def test_only_a_bounded_excerpt_of_the_answer_is_read(hook, org, receiver):
    receiver.reply(Reply(200, body=b"x" * 5_000_000))
    emit(org)
    assert deliver_due(CURRENT_TIME) == ["succeeded"]
    attempt = Delivery.objects.get().attempts.get()
    assert len(attempt.response_excerpt) == targets.RESPONSE_EXCERPT_BYTES


def test_the_sweep_command_delivers_what_is_due(
    hook, org, receiver, django_capture_on_commit_callbacks
):
    emit(org)
    call_command("send_webhooks", "--inline", stdout=(out := _Out()))
    assert "Attempted 1 webhook deliveries, 1 succeeded." in out.text
    assert len(receiver.requests) == 1


def test_the_sweep_task_queues_what_is_due(hook, org, receiver):
    # Tasks run eagerly in tests, so queueing delivers.
    emit(org)
    assert services.sweep_deliveries(now=CURRENT_TIME) == 1
    assert Delivery.objects.get().status == "succeeded"
    call_command("send_webhooks", stdout=(out := _Out()))
    assert "Queued 0 webhook deliveries." in out.text


def test_the_sweep_is_on_the_beat_schedule(settings):
    tasks = [entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()]
    assert "agentpost.events.tasks.sweep_webhook_deliveries" in tasks


def test_rotation_signs_with_both_secrets_during_the_grace_window(
    hook, org, api, receiver
):
    old_secret = receiver.secrets[0]
    response = api.post(
        f"/webhooks/{hook.id}/rotate-secret", {"grace_period_seconds": 3600}
    )
    assert response.status_code == 200
    new_secret = response.json()["secret"]
    assert new_secret.startswith("whsec_") and new_secret != old_secret
    receiver.secrets.append(new_secret)

    emit(org)
    deliver_due(CURRENT_TIME)
    got = receiver.requests[-1]
    assert got.verified_with == [old_secret, new_secret]
    assert len(got.headers["webhook-signature"].split(" ")) == 2

    later = CURRENT_TIME + timedelta(hours=1, seconds=1)
    with time_machine.travel(later, tick=False):
        services.emit_event(org=org, type="message.sent", data={}, now=later)
        deliver_due(later)
    assert receiver.requests[-1].verified_with == [new_secret]


def test_the_secret_never_reaches_the_log_or_the_database_in_clear(
    api, org, receiver, clock, caplog
):
    caplog.set_level("DEBUG")
    secret = api.post("/webhooks", {"url": receiver.url()}).json()["secret"]
    emit(org)
    deliver_due(CURRENT_TIME)
    endpoint = WebhookEndpoint.objects.get()
    stored = json.dumps(list(WebhookEndpoint.objects.values()), default=str)
    assert secret not in stored
    assert secret.removeprefix("whsec_") not in stored
    assert secret.removeprefix("whsec_") not in caplog.text
    assert services.signing_secrets(endpoint, CURRENT_TIME) == [secret]


class _Out:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_a_binary_answer_is_stored_readably(hook, org, receiver):
    receiver.reply(Reply(500, body=b"\x00\xffbad\x00"))
    emit(org)
    deliver_due(CURRENT_TIME)
    attempt = Delivery.objects.get().attempts.get()
    assert attempt.response_excerpt == "\ufffd\ufffdbad\ufffd"


def test_a_delivery_that_always_kills_its_worker_ends(hook, org, monkeypatch):
    def die(**kwargs):
        raise SystemExit("worker killed")

    monkeypatch.setattr(services, "send", die)
    emit(org)
    now = CURRENT_TIME
    for _ in range(services.MAX_ATTEMPTS):
        with pytest.raises(SystemExit):
            deliver_due(now)
        now += services.DELIVERY_LEASE + timedelta(seconds=1)

    assert deliver_due(now) == ["failed"]
    delivery = Delivery.objects.get()
    assert delivery.attempt_count == services.MAX_ATTEMPTS
    assert delivery.last_error == "No result was recorded for the last attempt."
    assert deliver_due(now + timedelta(days=1)) == []

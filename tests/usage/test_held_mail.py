from datetime import UTC, datetime

from agentpost.events.models import Event
from agentpost.mail.inbound import store_inbound_mail
from agentpost.mail.models import Message
from tests.conftest import CURRENT_TIME
from tests.usage.conftest import set_plan_limit
from usage.alerts import check_usage_alerts
from usage.services import get_usage, update_limit_overrides


def receive(inbox, n: int, now=CURRENT_TIME) -> list[Message]:
    return [
        store_inbound_mail(
            inbox=inbox,
            raw=(
                f"From: sender@example.com\r\nTo: {inbox.address}\r\n"
                f"Subject: note {i}\r\n\r\nbody {i}\r\n"
            ).encode(),
            now=now,
        )
        for i in range(n)
    ]


def listed_subjects(api, inbox) -> list[str]:
    data = api.get(f"/inboxes/{inbox.id}/messages").json()["data"]
    return sorted(m["subject"] for m in data)


def received_events(org) -> list[str]:
    return sorted(
        e.data["subject"]
        for e in Event.objects.filter(org=org, type="message.received")
    )


def test_mail_past_a_hard_limit_is_stored_but_held(billing, api, org, inbox):
    set_plan_limit("free", "messages_received", 2, "hard")

    messages = receive(inbox, 4)

    assert [m.status for m in messages] == ["received", "received", "held", "held"]
    assert Message.objects.filter(org=org).count() == 4  # nothing dropped
    assert listed_subjects(api, inbox) == ["note 0", "note 1"]
    assert api.get(f"/messages/{messages[2].id}").status_code == 404
    assert received_events(org) == ["note 0", "note 1"]
    # The org is told: the limit was reached and mail is being held.
    [exceeded] = Event.objects.filter(org=org, type="usage.exceeded")
    assert exceeded.data["counter"] == "messages_received"
    assert exceeded.data["inbound_held"] is True


def test_held_mail_is_released_when_staff_raise_the_limit(billing, api, org, inbox):
    set_plan_limit("free", "messages_received", 2, "hard")
    receive(inbox, 5)

    update_limit_overrides(
        org=org, changes={"messages_received": {"limit": 4}}, now=CURRENT_TIME
    )

    assert listed_subjects(api, inbox) == ["note 0", "note 1", "note 2", "note 3"]
    assert received_events(org) == ["note 0", "note 1", "note 2", "note 3"]
    assert Message.objects.get(subject="note 4").status == "held"


def test_held_mail_is_released_when_an_org_lifts_its_own_cap(billing, api, org, inbox):
    set_plan_limit("free", "messages_received", 3, "hard")
    api.patch(
        f"/organizations/{org.id}/settings",
        {"limits": {"messages_received": {"limit": 1}}},
    )
    receive(inbox, 3)
    assert listed_subjects(api, inbox) == ["note 0"]

    response = api.patch(
        f"/organizations/{org.id}/settings",
        {"limits": {"messages_received": {"limit": None}}},
    )

    assert response.status_code == 200
    assert listed_subjects(api, inbox) == ["note 0", "note 1", "note 2"]


def test_held_mail_is_released_when_the_period_resets(billing, api, org, inbox):
    set_plan_limit("free", "messages_received", 1, "hard")
    receive(inbox, 3)

    check_usage_alerts(now=CURRENT_TIME)
    assert Message.objects.filter(status="held").count() == 2

    april = datetime(2026, 4, 1, 0, 5, tzinfo=UTC)
    released = check_usage_alerts(now=april)

    assert released == (0, 2)
    assert listed_subjects(api, inbox) == ["note 0", "note 1", "note 2"]
    # Released mail was counted in March, not again in April.
    usage = get_usage(org=org, now=april)
    assert usage["messages_received"]["current"] == 0


def test_a_soft_limit_never_holds_mail(billing, org, inbox):
    org.plan = "starter"
    org.save()
    set_plan_limit("starter", "messages_received", 1, "soft")

    messages = receive(inbox, 3)

    assert {m.status for m in messages} == {"received"}

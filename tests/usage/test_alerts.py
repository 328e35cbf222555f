from datetime import UTC, datetime, timedelta

import time_machine
from django.core import mail
from django.core.management import call_command

from agentpost import metering
from agentpost.events.models import Event
from tests.conftest import CURRENT_TIME
from tests.usage.conftest import set_plan_limit
from usage.alerts import check_usage_alerts
from usage.models import UsageAlert, UsageCounter
from usage.services import update_limit_overrides


def charge(org, n: int = 1, now: datetime = CURRENT_TIME, counter="messages_sent"):
    for _ in range(n):
        metering.charge(org_id=org.pk, counter=counter, now=now, enforce=False)


def alert_events(org, type_: str):
    return list(Event.objects.filter(org=org, type=type_).order_by("created_at", "pk"))


def test_warning_fires_once_at_the_threshold(billing, org, owner):
    set_plan_limit("free", "messages_sent", 10, "hard")
    charge(org, 7)
    assert alert_events(org, "usage.warning") == []

    charge(org, 3)  # 8 is 80 %; 9 and 10 must not repeat it

    [warning] = alert_events(org, "usage.warning")
    assert warning.data == {
        "org_id": org.pk,
        "counter": "messages_sent",
        "current": 8,
        "limit": 10,
        "percentage": 80,
        "mode": "hard",
        "period": {
            "start": "2026-03-01T00:00:00+00:00",
            "end": "2026-04-01T00:00:00+00:00",
        },
    }
    [exceeded] = alert_events(org, "usage.exceeded")
    assert exceeded.data["current"] == 10
    assert exceeded.data["percentage"] == 100


def test_owners_are_emailed_once_per_alert(
    billing, org, owner, member, django_capture_on_commit_callbacks
):
    set_plan_limit("free", "messages_sent", 10, "hard")

    with django_capture_on_commit_callbacks(execute=True):
        charge(org, 10)

    assert [m.to for m in mail.outbox] == [[owner.email], [owner.email]]
    assert "near its limit" in mail.outbox[0].subject
    assert "has reached its limit" in mail.outbox[1].subject
    assert "8 of its 10 messages_sent" in mail.outbox[0].body
    assert "Further requests are refused" in mail.outbox[1].body
    html, mimetype = mail.outbox[1].alternatives[0]
    assert mimetype == "text/html" and "has reached its limit" in html


def test_the_check_fires_a_missed_crossing_once_however_often_it_runs(
    billing, org, django_capture_on_commit_callbacks
):
    set_plan_limit("free", "api_calls", 10, "hard")
    # Counted without passing through the meter, as a missed inline crossing.
    UsageCounter.objects.create(
        org=org,
        counter="api_calls",
        period_start=datetime(2026, 3, 1, tzinfo=UTC),
        shard=3,
        value=9,
    )

    with django_capture_on_commit_callbacks(execute=True):
        for minutes in range(0, 60, 15):
            check_usage_alerts(now=CURRENT_TIME + timedelta(minutes=minutes))

    assert len(alert_events(org, "usage.warning")) == 1
    assert alert_events(org, "usage.exceeded") == []
    assert len(mail.outbox) == 1


def test_alerts_rearm_in_the_next_period(billing, org):
    set_plan_limit("free", "messages_sent", 10, "hard")
    charge(org, 10)
    april = datetime(2026, 4, 3, tzinfo=UTC)
    check_usage_alerts(now=april)
    assert len(alert_events(org, "usage.exceeded")) == 1

    charge(org, 10, now=april)
    check_usage_alerts(now=april)

    exceeded = alert_events(org, "usage.exceeded")
    assert [e.data["period"]["start"][:10] for e in exceeded] == [
        "2026-03-01",
        "2026-04-01",
    ]


def test_alerts_rearm_when_the_limit_changes(billing, org):
    set_plan_limit("free", "messages_sent", 10, "hard")
    charge(org, 8)
    assert len(alert_events(org, "usage.warning")) == 1

    # Raising the limit re-arms; 8 of 20 is below the new 80 %.
    update_limit_overrides(
        org=org, changes={"messages_sent": {"limit": 20}}, now=CURRENT_TIME
    )
    assert len(alert_events(org, "usage.warning")) == 1
    charge(org, 8)

    assert [e.data["limit"] for e in alert_events(org, "usage.warning")] == [10, 20]


def test_lowering_a_limit_below_usage_fires_at_once(billing, org):
    set_plan_limit("free", "messages_sent", 100, "hard")
    charge(org, 50)

    update_limit_overrides(
        org=org, changes={"messages_sent": {"limit": 40}}, now=CURRENT_TIME
    )

    [exceeded] = alert_events(org, "usage.exceeded")
    assert (exceeded.data["current"], exceeded.data["limit"]) == (50, 40)


def test_a_soft_limit_warns_and_exceeds_without_refusing(billing, org):
    org.plan = "pro"
    org.save()
    set_plan_limit("pro", "api_calls", 5, "soft")

    charge(org, 7, counter="api_calls")

    assert len(alert_events(org, "usage.warning")) == 1
    [exceeded] = alert_events(org, "usage.exceeded")
    assert exceeded.data["mode"] == "soft"


def test_no_alerts_without_limits(org):
    charge(org, 50)
    check_usage_alerts(now=CURRENT_TIME)

    assert not UsageAlert.objects.exists()


def test_the_command_runs_the_check(billing, org, capsys):
    set_plan_limit("free", "api_calls", 10, "hard")
    UsageCounter.objects.create(
        org=org,
        counter="api_calls",
        period_start=datetime(2026, 3, 1, tzinfo=UTC),
        value=10,
    )

    with time_machine.travel(CURRENT_TIME, tick=False):
        call_command("check_usage_alerts")

    assert "Fired 2 alerts, released 0 messages" in capsys.readouterr().out


def test_beat_runs_the_check_every_15_minutes(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["usage-alerts"]
    assert entry["task"] == "usage.tasks.check_usage_alerts"
    assert entry["schedule"].minute == {0, 15, 30, 45}

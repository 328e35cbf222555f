from datetime import UTC, datetime

from django.core import mail
from django.core.management import call_command

from agentpost import metering
from agentpost.orgs.models import Membership
from console.summaries import send_weekly_summaries

MONDAY = datetime(2026, 3, 9, 8, 0, tzinfo=UTC)


def test_each_owner_gets_one_summary_a_week(org, owner, member):
    metering.charge(org_id=org.id, counter=metering.MESSAGES_SENT, now=MONDAY, amount=7)
    assert send_weekly_summaries(now=MONDAY) == 1
    assert send_weekly_summaries(now=MONDAY) == 0  # the task running twice
    (email,) = mail.outbox
    assert email.to == ["owner@acme.test"]  # owners only, not members
    assert email.subject == "Acme Agents: your AgentPost week"
    assert "Messages sent: 7" in email.body
    html = email.alternatives[0][0]
    assert "Your AgentPost week" in html and "Messages sent" in html


def test_owners_can_opt_out(org, owner):
    Membership.objects.filter(user=owner, org=org).update(weekly_summary=False)
    assert send_weekly_summaries(now=MONDAY) == 0
    assert mail.outbox == []


def test_the_summary_says_what_needs_attention(org, owner, settings):
    from usage.models import Plan, PlanLimit
    from usage.plans import seed_plans

    settings.BILLING_ENABLED = True
    seed_plans(Plan, PlanLimit)
    PlanLimit.objects.filter(plan_id="free", counter="messages_sent").update(limit=10)
    metering.charge(org_id=org.id, counter=metering.MESSAGES_SENT, now=MONDAY, amount=9)
    org.billing_state = "past_due"
    org.grace_deadline = datetime(2026, 3, 12, tzinfo=UTC)
    org.save()
    send_weekly_summaries(now=MONDAY)
    body = mail.outbox[0].body
    assert "Needs attention:" in body
    assert "Messages sent is at 90% of the plan's limit." in body
    assert "Your last payment failed." in body


def test_the_command_prints_a_count(org, owner, capsys):
    call_command("send_weekly_summaries")
    assert capsys.readouterr().out.strip() == "Sent 1 weekly summaries."

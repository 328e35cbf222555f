"""The owners' emails of the dunning flow (text and HTML, from templates/billing/)."""

from agentpost.orgs.models import Organization
from agentpost.orgs.notify import email_owners
from billing.models import DunningCase


def _case(case_id: int) -> DunningCase:
    return DunningCase.objects.get(pk=case_id)


def send_payment_failed(*, org_id: str, case_id: int) -> None:
    org = Organization.objects.get(pk=org_id)
    email_owners(
        org=org,
        subject=f"Payment failed for {org.name}: action needed",
        template="billing/email/payment_failed",
        context={"case": _case(case_id)},
    )


def send_suspension_reminder(*, org_id: str, case_id: int) -> None:
    org = Organization.objects.get(pk=org_id)
    email_owners(
        org=org,
        subject=f"{org.name} will be suspended soon: payment still failing",
        template="billing/email/suspension_reminder",
        context={"case": _case(case_id)},
    )


def send_suspended(*, org_id: str) -> None:
    org = Organization.objects.get(pk=org_id)
    email_owners(
        org=org,
        subject=f"{org.name} is suspended for non-payment",
        template="billing/email/suspended",
    )


def send_reinstated(*, org_id: str) -> None:
    org = Organization.objects.get(pk=org_id)
    email_owners(
        org=org,
        subject=f"{org.name} is active again",
        template="billing/email/reinstated",
    )

from __future__ import annotations

from dataclasses import dataclass

from agentpost.orgs.models import Organization
from billing.models import DunningCase


@dataclass
class Banner:
    level: str  # "warning" or "danger"
    title: str
    body: str
    action_label: str
    action_url: str


def dunning_banner(org: Organization) -> Banner | None:
    """Return the banner that says what happens when, while payment needs attention."""
    case = (
        DunningCase.objects.filter(org=org, resolved_at__isnull=True)
        .order_by("first_failed_at")
        .first()
    )
    pay_url = case.hosted_invoice_url if case and case.hosted_invoice_url else ""
    if org.billing_state == Organization.BillingState.PAST_DUE:
        deadline = (
            f"{org.grace_deadline:%-d %B %Y at %H:%M} UTC"
            if org.grace_deadline
            else "soon"
        )
        return Banner(
            level="warning",
            title="Your last payment failed.",
            body=(
                f"Everything keeps working until {deadline}. If the invoice is still "
                "unpaid then, this org will be suspended: sends and other changes will "
                "be refused, while your data and inbound mail are kept."
            ),
            action_label="Pay the invoice" if pay_url else "Update payment method",
            action_url=pay_url or "/console/billing/",
        )
    if org.billing_state == Organization.BillingState.SUSPENDED:
        return Banner(
            level="danger",
            title="This org is suspended for non-payment.",
            body=(
                "Sends and other changes are refused. Nothing is deleted: "
                "you can still "
                "read your messages and export your data, and inbound mail is stored. "
                "Paying the open invoice restores everything at once."
            ),
            action_label="Pay now" if pay_url else "Go to billing",
            action_url=pay_url or "/console/billing/",
        )
    return None

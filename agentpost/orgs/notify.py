"""
The one way AgentPost emails an org's owners: text and HTML from templates.

Each email is ``<template>.txt`` with ``<template>.html`` as its alternative, the
HTML extending ``email/_base.html``. Every owner gets a message of their own.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string

from agentpost.orgs.models import Organization

logger = logging.getLogger(__name__)


def email_owners(
    *,
    org: Organization,
    subject: str,
    template: str,
    context: dict | None = None,
    or_billing_email: bool = False,
) -> list[str]:
    """Email every owner of the org; return the addresses sent to.

    With ``or_billing_email``, an org without owners is written to at its
    billing address instead (for what must reach someone). The mail backend's
    errors propagate, so callers that must know can retry.
    """
    recipients = org.owner_emails()
    if not recipients and or_billing_email and org.billing_email:
        recipients = [org.billing_email]
    if not recipients:
        logger.warning("no owner to email org=%s template=%s", org.id, template)
        return []
    context = {"org": org, "site_url": settings.SITE_URL, **(context or {})}
    text = render_to_string(f"{template}.txt", context)
    html = render_to_string(f"{template}.html", context)
    for address in recipients:
        message = EmailMultiAlternatives(
            subject=subject,
            body=text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[address],
        )
        message.attach_alternative(html, "text/html")
        message.send()
    logger.info(
        "owners emailed org=%s template=%s count=%d", org.id, template, len(recipients)
    )
    return recipients

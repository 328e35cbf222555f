from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string

from agentpost.orgs.models import Organization

logger = logging.getLogger(__name__)


def email_owners(
    *, org: Organization, subject: str, template: str, context: dict | None = None
) -> int:
    """Email every owner of the org from ``<template>.txt`` and ``<template>.html``.

    Returns how many owners were sent to.
    """
    context = {"org": org, "site_url": settings.SITE_URL, **(context or {})}
    text = render_to_string(f"{template}.txt", context)
    html = render_to_string(f"{template}.html", context)
    recipients = org.owner_emails()
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
    return len(recipients)

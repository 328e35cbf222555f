"""Who may see and change what in the console.

Every console page works on one org, the "current" one kept in the session and
switched with the org switcher. A page is shown only to members of that org;
changes (plan, keys, webhooks, retention) are for owners.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect

from agentpost.orgs.models import Membership, Organization

SESSION_KEY = "console_org_id"


@dataclass
class ConsoleContext:
    org: Organization
    membership: Membership
    memberships: list[Membership]

    @property
    def is_owner(self) -> bool:
        return self.membership.role == Membership.Role.OWNER


def current_context(request) -> ConsoleContext | None:
    memberships = list(
        Membership.objects.filter(user=request.user)
        .select_related("org")
        .order_by("org__name")
    )
    if not memberships:
        return None
    wanted = request.session.get(SESSION_KEY)
    membership = next((m for m in memberships if m.org_id == wanted), memberships[0])
    request.session[SESSION_KEY] = membership.org_id
    return ConsoleContext(
        org=membership.org, membership=membership, memberships=memberships
    )


def member_required(view):
    """Load the current org for a member, or show the "no org" page."""

    @login_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        context = current_context(request)
        if context is None:
            return redirect("console:no_org")
        request.console = context
        return view(request, *args, **kwargs)

    return wrapper


def owner_required(view):
    """Like member_required, and refuse members who are not owners (403)."""

    @member_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.console.is_owner:
            raise PermissionDenied("Only the org's owners can change this.")
        return view(request, *args, **kwargs)

    return wrapper


def active_owner_required(view):
    """Like owner_required, and refuse a suspended org's changes, as the API does."""

    @owner_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if request.console.org.is_suspended:
            messages.error(
                request,
                "This org is suspended for non-payment: pay the open invoice on the "
                "billing page to make changes again.",
            )
            section = request.path.split("/")[2]  # /console/<section>/...
            return redirect(f"/console/{section}/")
        return view(request, *args, **kwargs)

    return wrapper

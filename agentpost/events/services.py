from __future__ import annotations

import logging
from datetime import datetime

from agentpost.events.models import Event
from agentpost.orgs.models import Organization

logger = logging.getLogger(__name__)

MESSAGE_RECEIVED = "message.received"
MESSAGE_SENT = "message.sent"
MESSAGE_FAILED = "message.failed"


def emit_event(
    *, org: Organization | str, type: str, data: dict, now: datetime
) -> Event:
    """Record that ``type`` happened in the org.

    Call inside the transaction that made it happen: the event exists exactly when
    the change it describes does.
    """
    org_id = org if isinstance(org, str) else org.pk
    event = Event.objects.create(org_id=org_id, type=type, data=data, created_at=now)
    logger.info("event recorded org=%s type=%s event=%s", org_id, type, event.id)
    return event

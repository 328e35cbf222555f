"""
Events and the webhooks that tell orgs about them.

An event is recorded in the transaction that made it happen, and in that same
transaction one ``Delivery`` row is made for every enabled endpoint that wants
it; so the deliveries exist exactly when the event does. After the commit a task
is queued for each, and a periodic sweep picks up whatever is due or stuck.

Each attempt is claimed with a conditional update that takes a lease; a worker
that dies mid-attempt leaves a lease that runs out, and the delivery is tried
again. Receivers therefore see an event at least once and dedupe on
``webhook-id``, which is the event id for every delivery and replay of it.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F

from agentpost import metering
from agentpost.events import secrets, targets
from agentpost.events.models import Delivery, DeliveryAttempt, Event, WebhookEndpoint
from agentpost.metering import QuotaExceeded
from agentpost.orgs.models import Organization
from agentpost.orgs.notify import email_owners
from agentpost.orgs.services import record_audit

logger = logging.getLogger(__name__)

MESSAGE_RECEIVED = "message.received"
MESSAGE_SENT = "message.sent"
MESSAGE_FAILED = "message.failed"
USAGE_WARNING = "usage.warning"
USAGE_EXCEEDED = "usage.exceeded"
BILLING_PAYMENT_FAILED = "billing.payment_failed"
ORG_SUSPENDED = "org.suspended"
ORG_REINSTATED = "org.reinstated"
RETENTION_WARNING = "retention.warning"

# Every event type there is, with what its ``data`` holds. This is the registry:
# an app that emits a new type adds it here, and it is then accepted by
# emit_event, offered to endpoints, and listed in the OpenAPI schema.
EVENT_TYPES: dict[str, str] = {
    MESSAGE_RECEIVED: "An inbound message was stored. "
    "data: message_id, inbox_id, from, subject.",
    MESSAGE_SENT: "An outbound message was handed to the mail service. "
    "data: message_id, inbox_id, error (empty).",
    MESSAGE_FAILED: "An outbound message could not be sent. "
    "data: message_id, inbox_id, error.",
    USAGE_WARNING: "A usage counter passed its plan's warning threshold. "
    "data: counter, current, limit, percentage, period_end.",
    USAGE_EXCEEDED: "A usage counter reached its limit. "
    "data: counter, current, limit, period_end.",
    BILLING_PAYMENT_FAILED: "A payment failed; access continues until the "
    "grace deadline. data: invoice_id, amount_due (cents), currency, "
    "grace_deadline, hosted_invoice_url.",
    ORG_SUSPENDED: "The org was suspended (sends and other writes refused, data "
    "kept). data: suspended_at, grace_deadline, by_staff.",
    ORG_REINSTATED: "The org was reinstated after payment or by staff. "
    "data: reinstated_at, previous_state.",
    RETENTION_WARNING: "Messages older than the retention policy will be deleted "
    "soon. data: retention_days, delete_after, message_count.",
}
ALL_EVENT_TYPES = "*"

# Events that tell an org about its own account still go out while it is
# suspended; everything else waits until it is reinstated.
SENT_WHILE_SUSPENDED = {BILLING_PAYMENT_FAILED, ORG_SUSPENDED}

# Waits after attempt 1, 2, ...: eight attempts over about 28 hours. Each wait is
# stretched or shrunk by up to RETRY_JITTER so that an endpoint coming back up
# is not hit by every delivery of an outage at the same second.
RETRY_DELAYS = (
    timedelta(seconds=5),
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
    timedelta(hours=5),
    timedelta(hours=10),
    timedelta(hours=10),
)
RETRY_JITTER = 0.1
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
# How long a claimed attempt may take before another worker may claim it again.
# Far longer than the HTTP timeouts, so a live worker never loses its claim.
DELIVERY_LEASE = timedelta(minutes=5)
# An endpoint whose every attempt has failed for this long is disabled.
DISABLE_AFTER_FAILING_FOR = timedelta(days=5)
SUSPENDED_RECHECK_INTERVAL = timedelta(minutes=15)
QUOTA_RECHECK_INTERVAL = timedelta(hours=1)
# Rotating a secret keeps the old one signing for this long by default.
ROTATION_GRACE_PERIOD = timedelta(hours=24)
ROTATION_GRACE_MAX = timedelta(days=7)
MAX_ENDPOINTS_PER_ORG = 20
SWEEP_BATCH_SIZE = 500
ERROR_MAX_LENGTH = 1000

OPEN_STATUSES = (Delivery.Status.PENDING, Delivery.Status.DELIVERING)


class EndpointLimitReached(Exception):
    pass


class EndpointDisabled(Exception):
    pass


# -- Events ----------------------------------------------------------------------


def emit_event(
    *, org: Organization | str, type: str, data: dict, now: datetime
) -> Event:
    """Record that ``type`` happened in the org and queue its webhook deliveries.

    Call inside the transaction that made it happen: the event and its
    deliveries exist exactly when the change it describes does.
    """
    if type not in EVENT_TYPES:
        raise ValueError(
            f"Unknown event type {type!r}: add it to EVENT_TYPES in "
            "agentpost/events/services.py."
        )
    org_id = org if isinstance(org, str) else org.pk
    with transaction.atomic():
        event = Event.objects.create(
            org_id=org_id, type=type, data=data, created_at=now
        )
        deliveries = fan_out(event=event, now=now)
    logger.info(
        "event recorded org=%s type=%s event=%s deliveries=%d",
        org_id,
        type,
        event.id,
        len(deliveries),
    )
    return event


def fan_out(*, event: Event, now: datetime) -> list[Delivery]:
    """Make a delivery of ``event`` for every enabled endpoint that wants it."""
    endpoints = WebhookEndpoint.objects.filter(org_id=event.org_id, enabled=True)
    deliveries = Delivery.objects.bulk_create(
        Delivery(
            org_id=event.org_id,
            endpoint=endpoint,
            event=event,
            next_attempt_at=now,
            created_at=now,
        )
        for endpoint in endpoints
        if endpoint.wants(event.type)
    )
    if deliveries:
        _enqueue_on_commit([d.id for d in deliveries])
    return deliveries


def _enqueue_on_commit(delivery_ids: list[str]) -> None:
    from agentpost.events.tasks import deliver_webhook

    def enqueue() -> None:
        for delivery_id in delivery_ids:
            deliver_webhook.delay(delivery_id)

    # robust: a broker that is down must not fail the caller's request after its
    # commit; the sweep finds these deliveries anyway.
    transaction.on_commit(enqueue, robust=True)


def payload_body(event: Event) -> bytes:
    """Return the exact bytes POSTed (and signed) for an event."""
    return json.dumps(event.payload(), separators=(",", ":")).encode()


# -- Endpoints -------------------------------------------------------------------


@dataclass
class NewEndpoint:
    endpoint: WebhookEndpoint
    secret: str  # shown once, stored only encrypted


def create_endpoint(
    *,
    org: Organization,
    url: str,
    event_types: list[str],
    description: str,
    enabled: bool,
    now: datetime,
    actor=None,
) -> NewEndpoint:
    """Register a webhook endpoint; return it with its signing secret.

    Raises targets.UnsafeTarget for a URL that may not be called and
    EndpointLimitReached past MAX_ENDPOINTS_PER_ORG.
    """
    targets.check_url(url)
    secret = secrets.new_secret()
    with transaction.atomic():
        # Lock the org row so two concurrent creations cannot both pass the limit.
        Organization.objects.select_for_update().filter(pk=org.pk).first()
        if WebhookEndpoint.objects.filter(org=org).count() >= MAX_ENDPOINTS_PER_ORG:
            raise EndpointLimitReached()
        endpoint = WebhookEndpoint.objects.create(
            org=org,
            url=url,
            event_types=event_types,
            description=description,
            enabled=enabled,
            disabled_reason="" if enabled else WebhookEndpoint.DisabledReason.BY_USER,
            disabled_at=None if enabled else now,
            secret_encrypted=secrets.encrypt(secret),
            created_at=now,
            updated_at=now,
        )
        record_audit(
            org=org,
            action="webhook.created",
            new=_audit_view(endpoint),
            now=now,
            actor=actor,
        )
    logger.info("webhook endpoint created org=%s endpoint=%s", org.id, endpoint.id)
    return NewEndpoint(endpoint=endpoint, secret=secret)


def update_endpoint(
    *, endpoint: WebhookEndpoint, changes: dict, now: datetime, actor=None
) -> WebhookEndpoint:
    """Change an endpoint's url, event_types, description or enabled flag.

    Enabling an endpoint (also one disabled for failing) starts it afresh.
    """
    if "url" in changes and changes["url"] != endpoint.url:
        targets.check_url(changes["url"])
    old = _audit_view(endpoint)
    for field in ("url", "event_types", "description"):
        if field in changes:
            setattr(endpoint, field, changes[field])
    if "enabled" in changes and changes["enabled"] != endpoint.enabled:
        endpoint.enabled = changes["enabled"]
        if endpoint.enabled:
            endpoint.disabled_reason = WebhookEndpoint.DisabledReason.NONE
            endpoint.disabled_at = None
            endpoint.failing_since = None
        else:
            endpoint.disabled_reason = WebhookEndpoint.DisabledReason.BY_USER
            endpoint.disabled_at = now
    endpoint.updated_at = now
    with transaction.atomic():
        endpoint.save()
        record_audit(
            org=endpoint.org,
            action="webhook.updated",
            old=old,
            new=_audit_view(endpoint),
            now=now,
            actor=actor,
        )
    return endpoint


def delete_endpoint(*, endpoint: WebhookEndpoint, now: datetime, actor=None) -> None:
    """Delete an endpoint with its deliveries; nothing more is sent to it."""
    with transaction.atomic():
        record_audit(
            org=endpoint.org,
            action="webhook.deleted",
            old=_audit_view(endpoint),
            now=now,
            actor=actor,
        )
        endpoint.delete()


def rotate_secret(
    *,
    endpoint: WebhookEndpoint,
    now: datetime,
    grace: timedelta = ROTATION_GRACE_PERIOD,
    actor=None,
) -> str:
    """Give the endpoint a new secret and return it.

    Until ``now + grace`` deliveries carry a signature made with the previous
    secret as well, so a receiver can switch secrets without losing any.
    """
    secret = secrets.new_secret()
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        endpoint.previous_secret_encrypted = (
            endpoint.secret_encrypted if grace > timedelta(0) else ""
        )
        endpoint.previous_secret_expires_at = now + grace if grace else None
        endpoint.secret_encrypted = secrets.encrypt(secret)
        endpoint.updated_at = now
        endpoint.save()
        record_audit(
            org=endpoint.org,
            action="webhook.secret_rotated",
            new={"endpoint": endpoint.id, "previous_valid_until": str(now + grace)},
            now=now,
            actor=actor,
        )
    logger.info("webhook secret rotated endpoint=%s", endpoint.id)
    return secret


def _audit_view(endpoint: WebhookEndpoint) -> dict:
    # What the audit log keeps of an endpoint: never the secret.
    return {
        "endpoint": endpoint.id,
        "url": endpoint.url,
        "event_types": endpoint.event_types,
        "enabled": endpoint.enabled,
        "description": endpoint.description,
    }


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """Return the secrets deliveries are signed with now: current, then previous."""
    found = [secrets.decrypt(endpoint.secret_encrypted)]
    if (
        endpoint.previous_secret_encrypted
        and endpoint.previous_secret_expires_at
        and endpoint.previous_secret_expires_at > now
    ):
        found.append(secrets.decrypt(endpoint.previous_secret_encrypted))
    return found


# -- Deliveries ------------------------------------------------------------------


def retry_delay(attempt_number: int) -> timedelta | None:
    """Return the wait after failed attempt ``attempt_number``, None after the last."""
    if attempt_number > len(RETRY_DELAYS):
        return None
    base = RETRY_DELAYS[attempt_number - 1]
    return base * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)


def deliver(*, delivery_id: str, now: datetime) -> str:
    """Make one attempt at a delivery if it is due; return its status afterwards.

    Safe to call twice or concurrently: only the worker whose conditional
    update claims the row sends anything.
    """
    delivery = (
        Delivery.objects.select_related("endpoint", "event", "org")
        .filter(pk=delivery_id)
        .first()
    )
    if delivery is None:
        return "missing"  # its endpoint was deleted
    if delivery.status not in OPEN_STATUSES or delivery.next_attempt_at > now:
        return delivery.status
    due = Delivery.objects.filter(
        pk=delivery.pk, status__in=OPEN_STATUSES, next_attempt_at__lte=now
    )

    # Reasons to wait or stop, which cost the org nothing.
    if delivery.attempt_count >= MAX_ATTEMPTS:
        # Only reached when the last attempts' workers died before recording an
        # answer: without this, a delivery that kills its worker would be
        # claimed again every lease, forever.
        due.update(
            status=Delivery.Status.FAILED,
            next_attempt_at=None,
            completed_at=now,
            last_error="No result was recorded for the last attempt.",
        )
        return Delivery.Status.FAILED
    if not delivery.endpoint.enabled:
        due.update(
            status=Delivery.Status.FAILED,
            next_attempt_at=None,
            completed_at=now,
            last_error="The endpoint is disabled.",
        )
        return Delivery.Status.FAILED
    if delivery.org.is_suspended and delivery.event.type not in SENT_WHILE_SUSPENDED:
        due.update(
            status=Delivery.Status.PENDING,
            next_attempt_at=now + SUSPENDED_RECHECK_INTERVAL,
            last_error="Waiting: the organization is suspended.",
        )
        return Delivery.Status.PENDING

    # Claim, count and log the attempt before sending it: if this worker dies
    # after sending, the lease runs out and the attempt is made again.
    try:
        with transaction.atomic():
            claimed = due.filter(attempt_count__lt=MAX_ATTEMPTS).update(
                status=Delivery.Status.DELIVERING,
                next_attempt_at=now + DELIVERY_LEASE,
                attempt_count=F("attempt_count") + 1,
                last_attempt_at=now,
            )
            if not claimed:
                return Delivery.objects.values_list("status", flat=True).get(
                    pk=delivery.pk
                )
            metering.charge(
                org_id=delivery.org_id, counter=metering.WEBHOOK_DELIVERIES, now=now
            )
            number = Delivery.objects.values_list("attempt_count", flat=True).get(
                pk=delivery.pk
            )
            DeliveryAttempt.objects.filter(
                delivery=delivery, finished_at__isnull=True
            ).update(error="No result recorded: the worker stopped mid-attempt.")
            attempt = DeliveryAttempt.objects.create(
                delivery=delivery, number=number, started_at=now
            )
    except QuotaExceeded as exc:
        # The claim rolled back with the charge. Never dropped: it waits for the
        # period in which the org may make deliveries again.
        resume = exc.resets_at or now + QUOTA_RECHECK_INTERVAL
        due.update(
            status=Delivery.Status.PENDING,
            next_attempt_at=resume,
            last_error=f"Waiting: the {exc.counter} limit of {exc.limit} is "
            f"reached until {resume.isoformat()}.",
        )
        logger.warning(
            "webhook delivery deferred by quota delivery=%s until=%s",
            delivery.pk,
            resume.isoformat(),
        )
        return Delivery.Status.PENDING

    response = send(endpoint=delivery.endpoint, event=delivery.event, now=now)
    return record_attempt(
        delivery=delivery, attempt=attempt, response=response, now=now
    )


def send(*, endpoint: WebhookEndpoint, event: Event, now: datetime) -> targets.Response:
    """POST the signed event to the endpoint (the URL is checked again first)."""
    body = payload_body(event)
    signatures = " ".join(
        secrets.sign(secret=secret, msg_id=event.id, timestamp=now, body=body)
        for secret in signing_secrets(endpoint, now)
    )
    headers = {
        "Content-Type": "application/json",
        "webhook-id": event.id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signatures,
    }
    return targets.post(url=endpoint.url, body=body, headers=headers)


def record_attempt(
    *,
    delivery: Delivery,
    attempt: DeliveryAttempt,
    response: targets.Response,
    now: datetime,
) -> str:
    """Write the outcome of an attempt and schedule what follows it."""
    succeeded = (
        not response.error
        and response.status_code is not None
        and 200 <= response.status_code < 300
    )
    error = response.error or ("" if succeeded else f"HTTP {response.status_code}")
    finished_at = now + timedelta(milliseconds=response.latency_ms)
    endpoint = delivery.endpoint

    with transaction.atomic():
        DeliveryAttempt.objects.filter(pk=attempt.pk).update(
            finished_at=finished_at,
            succeeded=succeeded,
            status_code=response.status_code,
            latency_ms=response.latency_ms,
            response_excerpt=response.excerpt,
            error=error[:ERROR_MAX_LENGTH],
        )
        # Only the holder of the current claim moves the delivery on; a worker
        # whose lease ran out records its attempt and nothing else.
        ours = Delivery.objects.filter(
            pk=delivery.pk,
            status=Delivery.Status.DELIVERING,
            attempt_count=attempt.number,
        )
        if succeeded:
            status = Delivery.Status.SUCCEEDED
            ours.update(
                status=status,
                next_attempt_at=None,
                completed_at=finished_at,
                last_status_code=response.status_code,
                last_error="",
            )
            WebhookEndpoint.objects.filter(
                pk=endpoint.pk, failing_since__isnull=False
            ).update(failing_since=None)
        else:
            delay = retry_delay(attempt.number)
            status = Delivery.Status.PENDING if delay else Delivery.Status.FAILED
            ours.update(
                status=status,
                next_attempt_at=now + delay if delay else None,
                completed_at=None if delay else finished_at,
                last_status_code=response.status_code,
                last_error=error[:ERROR_MAX_LENGTH],
            )
            WebhookEndpoint.objects.filter(
                pk=endpoint.pk, failing_since__isnull=True
            ).update(failing_since=now)
            failing_since = WebhookEndpoint.objects.values_list(
                "failing_since", flat=True
            ).get(pk=endpoint.pk)
            if failing_since and now - failing_since >= DISABLE_AFTER_FAILING_FOR:
                disabled = disable_failing_endpoint(
                    endpoint=endpoint,
                    failing_since=failing_since,
                    last_error=error,
                    now=now,
                )
                if disabled:
                    status = Delivery.Status.FAILED  # closed with the endpoint

    log = logger.info if succeeded else logger.warning
    log(
        "webhook attempt delivery=%s endpoint=%s attempt=%d status=%s code=%s "
        "latency_ms=%d error=%s",
        delivery.pk,
        endpoint.pk,
        attempt.number,
        status,
        response.status_code,
        response.latency_ms,
        error,
    )
    return status


def disable_failing_endpoint(
    *,
    endpoint: WebhookEndpoint,
    failing_since: datetime,
    last_error: str,
    now: datetime,
) -> bool:
    """Disable an endpoint that keeps failing, close its waiting deliveries and
    email the org's owners; return False if it was already disabled."""
    with transaction.atomic():
        disabled = WebhookEndpoint.objects.filter(pk=endpoint.pk, enabled=True).update(
            enabled=False,
            disabled_reason=WebhookEndpoint.DisabledReason.FAILING,
            disabled_at=now,
            updated_at=now,
        )
        if not disabled:
            return False
        closed = Delivery.objects.filter(
            endpoint=endpoint, status=Delivery.Status.PENDING
        ).update(
            status=Delivery.Status.FAILED,
            next_attempt_at=None,
            completed_at=now,
            last_error="The endpoint was disabled after failing repeatedly.",
        )
        record_audit(
            org=endpoint.org,
            action="webhook.disabled",
            new={"endpoint": endpoint.id, "closed_deliveries": closed},
            reason=f"Every attempt failed since {failing_since.isoformat()}.",
            now=now,
        )
        transaction.on_commit(
            lambda: _email_owners_disabled(endpoint.pk, last_error), robust=True
        )
    logger.warning(
        "webhook endpoint disabled org=%s endpoint=%s closed_deliveries=%d",
        endpoint.org_id,
        endpoint.pk,
        closed,
    )
    return True


def _email_owners_disabled(endpoint_id: str, last_error: str) -> None:
    endpoint = WebhookEndpoint.objects.select_related("org").get(pk=endpoint_id)
    email_owners(
        org=endpoint.org,
        subject=f"AgentPost: webhook endpoint disabled ({endpoint.id})",
        template="events/email/endpoint_disabled",
        context={
            "endpoint": endpoint,
            "last_error": last_error,
            "days": DISABLE_AFTER_FAILING_FOR.days,
        },
    )


def replay_delivery(*, delivery: Delivery, now: datetime) -> Delivery:
    """Queue the delivery's event to its endpoint again, as a new delivery.

    It carries the same ``webhook-id``: a receiver that already processed the
    event may ignore it. Raises EndpointDisabled if the endpoint is disabled.
    """
    if not delivery.endpoint.enabled:
        raise EndpointDisabled()
    with transaction.atomic():
        replay = Delivery.objects.create(
            org_id=delivery.org_id,
            endpoint_id=delivery.endpoint_id,
            event_id=delivery.event_id,
            next_attempt_at=now,
            replay_of=delivery,
            created_at=now,
        )
        _enqueue_on_commit([replay.id])
    logger.info(
        "webhook delivery replayed delivery=%s replay=%s", delivery.pk, replay.pk
    )
    return replay


def due_deliveries(*, now: datetime, limit: int = SWEEP_BATCH_SIZE) -> list[str]:
    """Return ids of deliveries that are due, or whose worker's lease ran out."""
    return list(
        Delivery.objects.filter(status__in=OPEN_STATUSES, next_attempt_at__lte=now)
        # A suspended org's deliveries would only be pushed back again.
        .exclude(
            org__billing_state=Organization.BillingState.SUSPENDED,
            event__type__in=set(EVENT_TYPES) - SENT_WHILE_SUSPENDED,
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )


def sweep_deliveries(*, now: datetime, limit: int = SWEEP_BATCH_SIZE) -> int:
    """Queue a task for every due or stuck delivery; return how many.

    A delivery may be queued twice (by its commit and by a sweep); the claim in
    ``deliver`` makes the second task a no-op.
    """
    from agentpost.events.tasks import deliver_webhook

    ids = due_deliveries(now=now, limit=limit)
    for delivery_id in ids:
        deliver_webhook.delay(delivery_id)
    logger.info("webhook sweep queued=%d", len(ids))
    return len(ids)

import json
import logging

import stripe
from django.conf import settings
from django.db import transaction
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from agentpost.api import error_response
from billing import stripe_api, webhooks
from billing.tasks import process_stripe_event

logger = logging.getLogger("agentpost.billing")

# Stripe's events are a few KB; anything far larger is not from Stripe.
MAX_WEBHOOK_BYTES = 1024 * 1024


@csrf_exempt
@require_POST
def stripe_webhook(request):
    """Receive a Stripe event: verify, store once, queue, answer at once."""
    if not settings.BILLING_ENABLED:
        return error_response(404, "billing_disabled", "Billing is not enabled.")
    if len(request.body) > MAX_WEBHOOK_BYTES:
        return error_response(413, "payload_too_large", "The event is too large.")
    signature = request.headers.get("Stripe-Signature", "")
    if not signature:
        return error_response(400, "invalid_signature", "Missing Stripe-Signature.")
    try:
        stripe_api.construct_event(payload=request.body, signature=signature)
    except stripe.SignatureVerificationError:
        # Also what an old (replayed) signature gets: the tolerance has passed.
        logger.warning("stripe webhook refused: bad or expired signature")
        return error_response(
            400, "invalid_signature", "The signature does not verify."
        )
    except ValueError:
        return error_response(400, "invalid_json", "The body is not a Stripe event.")

    payload = json.loads(request.body)
    if (
        not isinstance(payload, dict)
        or not payload.get("id")
        or not payload.get("type")
    ):
        return error_response(400, "invalid_request", "The event has no id or type.")
    with transaction.atomic():
        row, created = webhooks.store_event(event=payload, now=timezone.now())
        if created:
            transaction.on_commit(lambda: process_stripe_event.delay(row.id))
    logger.info(
        "stripe event received event=%s type=%s new=%s", row.id, row.type, created
    )
    return JsonResponse({"received": True, "id": row.id, "duplicate": not created})

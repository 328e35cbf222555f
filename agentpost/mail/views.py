"""The SNS endpoint for SES inbound mail (signed by AWS, not by an API key)."""

from __future__ import annotations

import json

from django.conf import settings
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from agentpost.api import error_response
from agentpost.mail import ses


def _read_body(request) -> bytes | None:
    """Return the body, or None if it is larger than SES_INBOUND_MAX_BODY_BYTES."""
    limit = settings.SES_INBOUND_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return None
    # Read one byte past the limit, so a body without a length is bounded too.
    body = request.read(limit + 1)
    return None if len(body) > limit else body


@csrf_exempt
def ses_inbound(request):
    if request.method != "POST":
        response = error_response(
            405, "method_not_allowed", "POST an SNS message to this URL."
        )
        response["Allow"] = "POST"
        return response

    body = _read_body(request)
    if body is None:
        return error_response(
            413,
            "payload_too_large",
            f"The body is larger than {settings.SES_INBOUND_MAX_BODY_BYTES} bytes.",
        )
    try:
        envelope = json.loads(body)
    except ValueError:
        return error_response(400, "invalid_json", "The body is not valid JSON.")
    if not isinstance(envelope, dict):
        return error_response(400, "invalid_json", "The body is not a JSON object.")

    topic_header = request.headers.get("x-amz-sns-topic-arn")
    if topic_header is not None and topic_header != envelope.get("TopicArn"):
        return error_response(
            400,
            "invalid_request",
            "The x-amz-sns-topic-arn header does not match the body's TopicArn.",
        )
    try:
        outcome = ses.receive_sns_message(
            envelope=envelope,
            message_type_header=request.headers.get("x-amz-sns-message-type", ""),
            now=timezone.now(),
        )
    except ses.Rejected as exc:
        return error_response(exc.status, exc.error_type, exc.message)
    return JsonResponse({"status": outcome.status})

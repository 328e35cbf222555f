"""
What every API endpoint shares: the error shape, strict input, cursor pagination.

Every failure answers ``{"error": {"type": ..., "message": ..., ...}}`` with the
status that fits: 400 bad input, 401 no or bad key, 403 not allowed, 404 unknown
(including another org's ids), 409 conflict, 413 body too large, 429 hard limit,
402 suspended org, 503 usage could not be checked (retry).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, JsonResponse
from django.utils import timezone
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import SAFE_METHODS
from rest_framework.response import Response
from rest_framework.views import APIView, set_rollback

from agentpost import metering
from agentpost.metering import QuotaExceeded, UsageUnavailable

logger = logging.getLogger(__name__)


class ApiError(exceptions.APIException):
    """An error with a stable ``type`` that clients can branch on."""

    def __init__(
        self, status_code: int, error_type: str, message: str, **extra: object
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type
        self.message = message
        self.extra = extra


class OrgSuspended(ApiError):
    def __init__(self) -> None:
        super().__init__(
            status.HTTP_402_PAYMENT_REQUIRED,
            "org_suspended",
            "This organization is suspended for non-payment. Reads, billing and "
            "export still work; pay the open invoice to restore access.",
        )


def error_body(error_type: str, message: str, **extra: object) -> dict:
    return {"error": {"type": error_type, "message": message, **extra}}


def error_response(
    status_code: int, error_type: str, message: str, **extra
) -> JsonResponse:
    """Return a plain Django response in the error shape (for non-DRF views)."""
    return JsonResponse(error_body(error_type, message, **extra), status=status_code)


def _flatten(detail, prefix: str = "") -> dict[str, list[str]]:
    """Turn DRF's nested validation detail into ``{"field.sub": ["message"]}``."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int):  # a list item's errors, from ListField
                out.update(_flatten(value, f"{prefix}[{key}]"))
                continue
            name = key if key != "non_field_errors" else ""
            out.update(
                _flatten(value, f"{prefix}.{name}".strip(".") if name else prefix)
            )
    elif isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            out[prefix or "body"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                out.update(_flatten(item, f"{prefix}[{index}]"))
    else:
        out[prefix or "body"] = [str(detail)]
    return out


def exception_handler(exc, context):
    """Render every API exception in the one error shape."""
    if isinstance(exc, Http404):
        exc = ApiError(404, "not_found", "No such object.")
    elif isinstance(exc, PermissionDenied):
        exc = ApiError(403, "forbidden", "You may not do this.")
    elif isinstance(exc, RequestDataTooBig):
        exc = ApiError(413, "payload_too_large", "The request body is too large.")
    elif isinstance(exc, QuotaExceeded):
        exc = quota_error(exc)
    elif isinstance(exc, UsageUnavailable):
        exc = ApiError(
            503,
            "usage_unavailable",
            "Usage could not be checked just now; retry this request.",
        )
        exc.wait = 1

    headers = {}
    if isinstance(exc, ApiError):
        body = error_body(exc.error_type, exc.message, **exc.extra)
    elif isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first = next(iter(fields.items()), ("body", ["Invalid input."]))
        message = f"{first[0]}: {first[1][0]}" if first[0] != "body" else first[1][0]
        body = error_body("invalid_request", message, fields=fields)
    elif isinstance(exc, exceptions.ParseError):
        body = error_body("invalid_json", "The request body is not valid JSON.")
    elif isinstance(exc, exceptions.UnsupportedMediaType):
        body = error_body("unsupported_media_type", "Send JSON (application/json).")
    elif isinstance(
        exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)
    ):
        body = error_body("unauthorized", str(exc.detail))
        headers["WWW-Authenticate"] = 'Bearer realm="api"'
    elif isinstance(exc, exceptions.PermissionDenied):
        body = error_body("forbidden", str(exc.detail))
    elif isinstance(exc, exceptions.NotFound):
        body = error_body("not_found", "No such object.")
    elif isinstance(exc, exceptions.MethodNotAllowed):
        body = error_body("method_not_allowed", str(exc.detail))
    elif isinstance(exc, exceptions.Throttled):
        body = error_body("rate_limited", str(exc.detail))
    elif isinstance(exc, exceptions.APIException):
        body = error_body("api_error", str(exc.detail))
    else:
        return None  # a bug: let Django log it and answer 500

    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))
    set_rollback()
    return Response(body, status=exc.status_code, headers=headers)


def quota_error(exc: QuotaExceeded) -> ApiError:
    resets_at = exc.resets_at.isoformat() if exc.resets_at else None
    error = ApiError(
        status.HTTP_429_TOO_MANY_REQUESTS,
        "usage_limit_exceeded",
        f"The {exc.counter} limit of {exc.limit} for this period is reached.",
        counter=exc.counter,
        limit=exc.limit,
        current=exc.current,
        resets_at=resets_at,
    )
    if exc.resets_at:  # sent as Retry-After, in seconds
        error.wait = max(math.ceil((exc.resets_at - timezone.now()).total_seconds()), 1)
    return error


class StrictSerializer(serializers.Serializer):
    """A serializer that refuses fields it does not know, instead of ignoring them.

    Text fields take only JSON strings: DRF would otherwise turn 5 into "5".
    """

    @classmethod
    def validate_input(cls, data, **kwargs) -> dict:
        """Return the validated data or raise the 400 that describes what is wrong."""
        serializer = cls(data=data, **kwargs)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"body": ["Expected a JSON object."]}, code="invalid"
            )
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {name: ["Unknown field."] for name in unknown}, code="unknown_field"
            )
        not_text = sorted(
            name
            for name, field in self.fields.items()
            if isinstance(field, serializers.CharField)
            and data.get(name) is not None
            and not isinstance(data[name], str)
        )
        if not_text:
            raise serializers.ValidationError(
                {name: ["Expected a string."] for name in not_text}, code="invalid"
            )
        return super().to_internal_value(data)


class Base64Field(serializers.CharField):
    """Standard base64 text, decoded to bytes; refuses anything else."""

    def to_internal_value(self, data) -> bytes:
        text = super().to_internal_value(data)
        try:
            return base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise serializers.ValidationError("Not valid base64.") from None

    def to_representation(self, value) -> str:
        return base64.b64encode(value).decode()


PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 200


def paginate(request, queryset, serializer_class, *, context=None) -> Response:
    """Answer one page of ``queryset`` (newest first) with a cursor and ``has_more``.

    Ids are ULIDs, so the id order is the creation order and the cursor is simply
    the last id of the page.
    """
    try:
        limit = int(request.query_params.get("limit", PAGE_SIZE_DEFAULT))
    except ValueError:
        raise ApiError(
            400, "invalid_request", "limit must be a whole number."
        ) from None
    if not 1 <= limit <= PAGE_SIZE_MAX:
        raise ApiError(400, "invalid_request", f"limit must be 1 to {PAGE_SIZE_MAX}.")

    queryset = queryset.order_by("-pk")
    if cursor := request.query_params.get("cursor"):
        queryset = queryset.filter(pk__lt=cursor)
    rows = list(queryset[: limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    data = serializer_class(rows, many=True, context=context or {}).data
    return Response(
        {
            "data": data,
            "has_more": has_more,
            "next_cursor": rows[-1].pk if has_more else None,
        }
    )


QUOTA_HEADERS = (
    "AgentPost-Quota-Counter",
    "AgentPost-Quota-Limit",
    "AgentPost-Quota-Remaining",
    "AgentPost-Quota-Reset",
)


class OrgAPIView(APIView):
    """Base for endpoints called with an org's API key.

    Each request is counted as one ``api_calls`` (refused with 429 at a hard limit),
    and a suspended org may only read, unless the view allows more.
    """

    # Views that a suspended org must keep (billing, export) set this to True.
    allowed_when_suspended = False
    # Views an org needs to see and lift its limits (usage, settings) set this to
    # False: their api_calls are counted but never refused.
    enforce_api_calls = True

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        org = request.auth.org
        if (
            org.is_suspended
            and request.method not in SAFE_METHODS
            and not self.allowed_when_suspended
        ):
            raise OrgSuspended()
        request.charges = metering.collect_charges()
        metering.charge(
            org_id=org.id,
            counter=metering.API_CALLS,
            now=timezone.now(),
            enforce=self.enforce_api_calls,
        )

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        metering.stop_collecting()
        # Of the counters this request charged, show the one nearest its limit.
        limited = [c for c in getattr(request, "charges", ()) if c.limit is not None]
        quota = max(
            limited, key=lambda c: c.current / c.limit if c.limit else 1.0, default=None
        )
        if quota is not None:
            response[QUOTA_HEADERS[0]] = quota.counter
            response[QUOTA_HEADERS[1]] = str(quota.limit)
            response[QUOTA_HEADERS[2]] = str(max(quota.limit - quota.current, 0))
            if quota.resets_at:
                response[QUOTA_HEADERS[3]] = quota.resets_at.isoformat()
        return response

    @property
    def org(self):
        return self.request.auth.org

    def check_org_id(self, org_id: str) -> None:
        """404 for any org id but the caller's own, so ids of others leak nothing."""
        if org_id != self.org.id:
            raise ApiError(404, "not_found", "No such organization.")

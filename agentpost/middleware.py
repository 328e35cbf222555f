from django.conf import settings

from agentpost.api import error_response


class RequestSizeLimitMiddleware:
    """Refuse bodies over API_MAX_BODY_BYTES with 413 before anything reads them."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        length = request.META.get("CONTENT_LENGTH") or "0"
        try:
            size = int(length)
        except ValueError:
            return error_response(400, "invalid_request", "Bad Content-Length header.")
        if size > settings.API_MAX_BODY_BYTES:
            return error_response(
                413,
                "payload_too_large",
                f"The request body is larger than {settings.API_MAX_BODY_BYTES} bytes.",
            )
        return self.get_response(request)

from django.shortcuts import render

from agentpost.api import error_response


def _wants_html(request) -> bool:
    return request.path.startswith(("/console/", "/admin/"))


def not_found(request, exception=None):
    if _wants_html(request):
        return render(request, "404.html", status=404)
    return error_response(404, "not_found", "No such path.")


def server_error(request):
    if _wants_html(request):
        return render(request, "500.html", status=500)
    return error_response(500, "internal_error", "Something went wrong on our side.")

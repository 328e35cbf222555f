from agentpost.api import error_response


def not_found(request, exception=None):
    return error_response(404, "not_found", "No such path.")


def server_error(request):
    return error_response(500, "internal_error", "Something went wrong on our side.")

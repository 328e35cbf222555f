from console.banner import dunning_banner


def console(request) -> dict:
    context = getattr(request, "console", None)
    if context is None:
        return {}
    return {
        "current_org": context.org,
        "memberships": context.memberships,
        "is_owner": context.is_owner,
        "dunning_banner": dunning_banner(context.org),
    }

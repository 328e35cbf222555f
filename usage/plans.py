"""The plans a fresh installation starts with (seeded by a data migration).

Staff edit plans and their limits in the admin afterwards; these numbers are
only the starting point.
"""

MB = 1024 * 1024
GB = 1024 * MB

# code: (name, mode, {counter: limit or None}). Prices live in billing.PlanPrice.
DEFAULT_PLANS = {
    "free": (
        "Free",
        "hard",
        {
            "messages_sent": 3_000,
            "messages_received": 3_000,
            "storage_bytes": 100 * MB,
            "api_calls": 100_000,
            "webhook_deliveries": 10_000,
        },
    ),
    "starter": (
        "Starter",
        "soft",
        {
            "messages_sent": 50_000,
            "messages_received": 50_000,
            "storage_bytes": 5 * GB,
            "api_calls": 1_000_000,
            "webhook_deliveries": 100_000,
        },
    ),
    "pro": (
        "Pro",
        "soft",
        {
            "messages_sent": 500_000,
            "messages_received": 500_000,
            "storage_bytes": 50 * GB,
            "api_calls": 10_000_000,
            "webhook_deliveries": 1_000_000,
        },
    ),
    # Used for every org when BILLING_ENABLED is off: counts, never limits.
    "selfhosted": (
        "Self-hosted",
        "soft",
        {
            "messages_sent": None,
            "messages_received": None,
            "storage_bytes": None,
            "api_calls": None,
            "webhook_deliveries": None,
        },
    ),
}


def seed_plans(plan_model, plan_limit_model) -> None:
    """Create the default plans that do not exist yet (takes model classes)."""
    for code, (name, mode, limits) in DEFAULT_PLANS.items():
        plan, created = plan_model.objects.get_or_create(
            code=code, defaults={"name": name}
        )
        if not created:
            continue
        plan_limit_model.objects.bulk_create(
            plan_limit_model(plan=plan, counter=counter, limit=limit, mode=mode)
            for counter, limit in limits.items()
        )

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.compatibility)
def check_billing_settings(app_configs, **kwargs):
    if not settings.BILLING_ENABLED:
        return []
    errors = []
    if not settings.STRIPE_SECRET_KEY:
        errors.append(
            Error(
                "BILLING_ENABLED is on but STRIPE_SECRET_KEY is empty.",
                hint="Set STRIPE_SECRET_KEY, or turn billing off.",
                id="billing.E001",
            )
        )
    if not settings.STRIPE_WEBHOOK_SECRET:
        errors.append(
            Error(
                "BILLING_ENABLED is on but STRIPE_WEBHOOK_SECRET is empty.",
                hint="Set it to the signing secret of your Stripe webhook endpoint.",
                id="billing.E002",
            )
        )
    return errors

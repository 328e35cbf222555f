from django.core.management.base import BaseCommand, CommandError

from billing import services, stripe_api


class Command(BaseCommand):
    help = (
        "Create or update each paid plan's product and price in Stripe, and link them."
    )

    def handle(self, *args, **options) -> None:
        try:
            results = services.sync_plans()
        except stripe_api.BillingProviderError as error:
            raise CommandError(error.message) from None
        for plan_code, outcome in results:
            self.stdout.write(f"{plan_code}: {outcome}")
        self.stdout.write(f"Synced {len(results)} plans.")

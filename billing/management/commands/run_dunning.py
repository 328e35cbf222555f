from django.core.management.base import BaseCommand
from django.utils import timezone

from billing import dunning


class Command(BaseCommand):
    help = "Send suspension reminders and suspend orgs whose grace period ended unpaid."

    def handle(self, *args, **options) -> None:
        result = dunning.run_dunning(now=timezone.now())
        self.stdout.write(
            f"Reminded {result['reminded']} orgs, suspended {result['suspended']} orgs."
        )

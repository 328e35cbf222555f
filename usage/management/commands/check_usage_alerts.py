from django.core.management.base import BaseCommand
from django.utils import timezone

from usage.alerts import check_usage_alerts


class Command(BaseCommand):
    help = "Fire due usage alerts and release held inbound mail (beat runs this)."

    def handle(self, *args, **options) -> None:
        fired, released = check_usage_alerts(now=timezone.now())
        self.stdout.write(f"Fired {fired:,} alerts, released {released:,} messages")

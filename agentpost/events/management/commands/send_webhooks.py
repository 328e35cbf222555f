from django.core.management.base import BaseCommand
from django.utils import timezone

from agentpost.events import services


class Command(BaseCommand):
    help = (
        "Queue every webhook delivery that is due or whose worker stopped "
        "mid-attempt (what Celery beat runs), or with --inline deliver them here."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--inline",
            action="store_true",
            help="Make the attempts in this process instead of queueing them.",
        )

    def handle(self, *args, inline: bool = False, **options) -> None:
        now = timezone.now()
        if not inline:
            count = services.sweep_deliveries(now=now)
            self.stdout.write(f"Queued {count:,} webhook deliveries.")
            return
        statuses = [
            services.deliver(delivery_id=delivery_id, now=timezone.now())
            for delivery_id in services.due_deliveries(now=now)
        ]
        succeeded = statuses.count("succeeded")
        self.stdout.write(
            f"Attempted {len(statuses):,} webhook deliveries, {succeeded:,} succeeded."
        )

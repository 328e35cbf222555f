from django.core.management.base import BaseCommand
from django.utils import timezone

from console.summaries import send_weekly_summaries


class Command(BaseCommand):
    help = "Email each opted-in owner the weekly usage summary (once per week)."

    def handle(self, *args, **options) -> None:
        sent = send_weekly_summaries(now=timezone.now())
        self.stdout.write(f"Sent {sent} weekly summaries.")

from django.core.management.base import BaseCommand

from usage.live import live_counts


class Command(BaseCommand):
    help = (
        "Copy the api_calls counted in Redis into the database now (beat does "
        "this every USAGE_FLUSH_SECONDS)."
    )

    def handle(self, *args, **options) -> None:
        counts = live_counts()
        if counts is None:
            self.stdout.write("USAGE_REDIS_URL is not set: counts are in the database")
            return
        written = counts.flush()
        self.stdout.write(f"Flushed {written:,} counters")

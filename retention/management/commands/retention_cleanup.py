from django.core.management.base import BaseCommand
from django.utils import timezone

from retention import cleanup


class Command(BaseCommand):
    help = "Delete expired messages that their owners were warned about."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--org", help="only this org id")
        parser.add_argument(
            "--dry-run", action="store_true", help="count, delete nothing"
        )
        parser.add_argument("--batch-size", type=int, help="messages per transaction")

    def handle(self, *args, org=None, dry_run=False, batch_size=None, **options):
        results = cleanup.run_cleanup(
            now=timezone.now(), org_id=org, dry_run=dry_run, batch_size=batch_size
        )
        for r in results:
            if r.skipped:
                self.stdout.write(f"{r.org_id}: skipped ({r.skipped})")
            else:
                self.stdout.write(
                    f"{r.org_id}: {r.messages:,} messages, {r.attachments:,} "
                    f"attachments, {r.bytes:,} bytes before {r.cutoff:%Y-%m-%d %H:%M}"
                )
        verb = "Would delete" if dry_run else "Deleted"
        self.stdout.write(f"{verb} {sum(r.messages for r in results):,} messages")

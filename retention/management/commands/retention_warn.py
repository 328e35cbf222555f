from django.core.management.base import BaseCommand
from django.utils import timezone

from retention import services


class Command(BaseCommand):
    help = "Warn org owners before retention deletes their messages."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--org", help="only this org id")
        parser.add_argument(
            "--dry-run", action="store_true", help="say who would be warned"
        )

    def handle(self, *args, org=None, dry_run=False, **options) -> None:
        notices = services.send_warnings(
            now=timezone.now(), org_id=org, dry_run=dry_run
        )
        for notice in notices:
            self.stdout.write(
                f"{notice.org_id}: {notice.messages:,} messages, {notice.bytes:,} "
                f"bytes created before {notice.cutoff:%Y-%m-%d %H:%M} UTC"
            )
        verb = "Would send" if dry_run else "Sent"
        self.stdout.write(f"{verb} {len(notices):,} warnings")

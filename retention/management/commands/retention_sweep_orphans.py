from django.core.management.base import BaseCommand
from django.utils import timezone

from retention import sweep


class Command(BaseCommand):
    help = "Remove stored files that no row names; report rows whose file is gone."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--org", help="only this org id")
        parser.add_argument(
            "--dry-run", action="store_true", help="report, remove nothing"
        )

    def handle(self, *args, org=None, dry_run=False, **options) -> None:
        result = sweep.sweep_orphans(now=timezone.now(), org_id=org, dry_run=dry_run)
        verb = "Would remove" if dry_run else "Removed"
        self.stdout.write(
            f"{verb} {result.orphans_removed:,} orphan files "
            f"({result.orphans_too_young:,} too young to take); "
            f"{result.missing:,} rows with a missing file"
        )

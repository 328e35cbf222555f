from celery import shared_task
from django.utils import timezone

from retention import cleanup, services, sweep


@shared_task(acks_late=True)
def send_retention_warnings(org_id: str | None = None) -> int:
    return len(services.send_warnings(now=timezone.now(), org_id=org_id))


@shared_task(acks_late=True)
def run_retention_cleanup(org_id: str | None = None) -> int:
    results = cleanup.run_cleanup(now=timezone.now(), org_id=org_id)
    return sum(r.messages for r in results)


@shared_task(acks_late=True)
def sweep_orphan_files(org_id: str | None = None) -> int:
    return sweep.sweep_orphans(now=timezone.now(), org_id=org_id).orphans_removed

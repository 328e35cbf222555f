from celery import shared_task
from django.utils import timezone

from usage import alerts, live


@shared_task
def check_usage_alerts() -> tuple[int, int]:
    return alerts.check_usage_alerts(now=timezone.now())


@shared_task(acks_late=True)
def send_usage_alert_email(alert_id: int) -> int:
    return alerts.email_alert(alert_id=alert_id)


@shared_task
def flush_live_counts() -> int:
    """Copy the counts kept in Redis into the database (nothing without Redis)."""
    counts = live.live_counts()
    return counts.flush() if counts else 0

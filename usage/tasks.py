from celery import shared_task
from django.utils import timezone

from usage import alerts


@shared_task
def check_usage_alerts() -> tuple[int, int]:
    return alerts.check_usage_alerts(now=timezone.now())


@shared_task(acks_late=True)
def send_usage_alert_email(alert_id: int) -> int:
    return alerts.email_alert(alert_id=alert_id)

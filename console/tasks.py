from celery import shared_task
from django.utils import timezone

from console.summaries import send_weekly_summaries


@shared_task
def send_weekly_usage_summaries() -> int:
    return send_weekly_summaries(now=timezone.now())

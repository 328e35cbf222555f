from celery import shared_task
from django.utils import timezone

from agentpost.events import services


@shared_task(acks_late=True)
def deliver_webhook(delivery_id: str) -> str:
    return services.deliver(delivery_id=delivery_id, now=timezone.now())


@shared_task
def sweep_webhook_deliveries() -> int:
    return services.sweep_deliveries(now=timezone.now())

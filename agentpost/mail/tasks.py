from celery import shared_task
from django.utils import timezone

from agentpost.mail import services, ses


@shared_task(acks_late=True)
def deliver_message(message_id: str) -> str:
    return services.deliver_message(message_id=message_id)


@shared_task(acks_late=True)
def confirm_sns_subscription(record_id: int) -> str:
    return ses.confirm_subscription(record_id=record_id, now=timezone.now())

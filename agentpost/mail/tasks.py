from celery import shared_task

from agentpost.mail import services


@shared_task(acks_late=True)
def deliver_message(message_id: str) -> str:
    return services.deliver_message(message_id=message_id)

from celery import shared_task
from django.utils import timezone

from billing import dunning, webhooks


@shared_task(acks_late=True)
def process_stripe_event(event_id: str) -> str:
    return webhooks.process_event(event_id=event_id)


@shared_task
def run_dunning() -> dict:
    return dunning.run_dunning(now=timezone.now())

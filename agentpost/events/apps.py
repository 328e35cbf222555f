from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "agentpost.events"
    label = "events"
    verbose_name = "Events and webhooks"

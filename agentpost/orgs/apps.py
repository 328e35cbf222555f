from django.apps import AppConfig


class OrgsConfig(AppConfig):
    name = "agentpost.orgs"
    label = "orgs"
    verbose_name = "Organizations"

from django.apps import AppConfig


class OrgsConfig(AppConfig):
    name = "agentpost.orgs"
    label = "orgs"
    verbose_name = "Organizations"

    def ready(self) -> None:
        from agentpost import checks  # noqa: F401  (registers the deploy checks)
        from agentpost.orgs import schema  # noqa: F401  (registers the auth scheme)

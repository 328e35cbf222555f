from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "usage"
    verbose_name = "Usage"

    def ready(self) -> None:
        from agentpost import metering
        from usage.meter import DatabaseMeter

        metering.install(DatabaseMeter())

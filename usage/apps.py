from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _install_count_function(sender, using, **kwargs) -> None:
    # After every migrate (and the test suite's table-building syncdb), so the
    # function always matches the code that calls it.
    from django.db import connections

    from usage.counting import install_function

    install_function(connections[using])


class UsageConfig(AppConfig):
    name = "usage"
    verbose_name = "Usage"

    def ready(self) -> None:
        from agentpost import metering
        from usage.meter import DatabaseMeter

        metering.install(DatabaseMeter())
        post_migrate.connect(
            _install_count_function, sender=self, dispatch_uid="usage_count"
        )

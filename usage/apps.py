from django.apps import AppConfig
from django.db.models.signals import post_delete, post_migrate, post_save


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
        from agentpost.orgs.models import Organization
        from usage import signals
        from usage.meter import UsageMeter
        from usage.models import LimitOverride, Plan, PlanLimit

        metering.install(UsageMeter())
        post_migrate.connect(
            _install_count_function, sender=self, dispatch_uid="usage_count"
        )
        # A deleted org needs nothing: its cached limits expire unused.
        post_save.connect(signals.org_saved, sender=Organization)
        for signal in (post_save, post_delete):
            signal.connect(signals.override_changed, sender=LimitOverride)
            signal.connect(signals.plans_changed, sender=PlanLimit)
            signal.connect(signals.plans_changed, sender=Plan)

"""
Keep the limits cached in Redis (usage.live) in step with the database.

Any change to an org (its plan, its billing period), its overrides, or a plan's
limits writes an outbox row in the change's transaction; once it commits, the
row bumps an invalidation number in Redis and the next counted call reloads
the limits. If Redis does not answer then, the next flush does it.
"""

from __future__ import annotations

from usage import live
from usage.models import LiveOutbox


def _limits_changed(org_id: str) -> None:
    if live.live_counts():
        live.record_for_redis(kind=LiveOutbox.Kind.LIMITS, org_id=org_id)


def org_saved(sender, instance, **kwargs) -> None:
    _limits_changed(instance.pk)


def override_changed(sender, instance, **kwargs) -> None:
    _limits_changed(instance.org_id)


def plans_changed(sender, **kwargs) -> None:
    _limits_changed("")  # every org's

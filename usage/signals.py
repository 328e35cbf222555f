"""
Keep the limits cached in Redis (usage.live) in step with the database.

Any change to an org (its plan, its billing period), its overrides, or a plan's
limits bumps an invalidation number once the change commits; the next counted
call sees the cached limits are out of date and reloads them.
"""

from __future__ import annotations

import logging

import redis
from django.db import transaction

from usage import live

logger = logging.getLogger(__name__)


def _after_commit(forget) -> None:
    def run() -> None:
        try:
            forget()
        except redis.RedisError:
            # Cached limits expire within live.CONFIG_TTL_MS regardless.
            logger.warning("usage redis unavailable: cached limits not invalidated")

    transaction.on_commit(run)


def org_changed(sender, instance, **kwargs) -> None:
    if counts := live.live_counts():
        _after_commit(lambda: counts.forget_org(instance.pk))


def override_changed(sender, instance, **kwargs) -> None:
    if counts := live.live_counts():
        _after_commit(lambda: counts.forget_org(instance.org_id))


def plans_changed(sender, **kwargs) -> None:
    if counts := live.live_counts():
        _after_commit(counts.forget_all)

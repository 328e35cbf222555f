"""Deploy checks (``manage.py check --deploy``) for settings only AgentPost has."""

import os

from django.core.checks import Error, Tags, Warning, register


@register(Tags.security, deploy=True)
def check_secret_key_is_set(app_configs, **kwargs):
    # Without SECRET_KEY, each host generates its own into ./var: sessions and
    # the webhook secrets' encryption then differ from host to host.
    if os.environ.get("SECRET_KEY"):
        return []
    return [
        Warning(
            "SECRET_KEY is not set: this host uses one it generated into "
            "AGENTPOST_VAR_DIR, which no other host shares.",
            hint="Set SECRET_KEY in the environment of every web and worker host.",
            id="agentpost.W001",
        )
    ]


@register(deploy=True)
def check_usage_counts_in_redis(app_configs, **kwargs):
    from django.conf import settings

    if settings.USAGE_REDIS_URL:
        return _check_usage_redis()
    return [
        Warning(
            "USAGE_REDIS_URL is not set: every API call is counted in a database "
            "transaction of its own.",
            hint="Point USAGE_REDIS_URL at a Redis with appendonly yes (README, "
            "Usage limits).",
            id="agentpost.W002",
        )
    ]


def _check_usage_redis() -> list:
    import redis

    from usage.live import live_counts

    try:
        live_counts().admin.info("server")
    except redis.ResponseError as exc:
        return [
            Error(
                f"The Redis of USAGE_REDIS_URL refuses INFO ({exc}).",
                hint="Counting needs INFO to notice a restarted Redis; allow it "
                "to this user (ACL +info). Until then every call is counted in "
                "the database and hard api_calls limits answer 503.",
                id="agentpost.E001",
            )
        ]
    except redis.RedisError as exc:
        return [
            Warning(
                f"The Redis of USAGE_REDIS_URL does not answer ({exc}).",
                id="agentpost.W003",
            )
        ]
    return []

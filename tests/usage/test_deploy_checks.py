"""manage.py check --deploy warns about what a real deployment must set."""

from __future__ import annotations

from django.core.checks.registry import registry

from agentpost import checks


def warnings() -> list[str]:
    # Only AgentPost's own: the whole command would also judge this test run.
    found = checks.check_secret_key_is_set(None) + checks.check_usage_counts_in_redis(
        None
    )
    return [warning.id for warning in found]


def test_the_checks_run_with_check_deploy():
    deploy_checks = registry.get_checks(include_deployment_checks=True)

    assert checks.check_secret_key_is_set in deploy_checks
    assert checks.check_usage_counts_in_redis in deploy_checks
    assert checks.check_secret_key_is_set not in registry.get_checks()


def test_it_warns_without_a_shared_secret_key_or_redis(monkeypatch, settings):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    settings.USAGE_REDIS_URL = ""

    assert warnings() == ["agentpost.W001", "agentpost.W002"]


def test_it_is_quiet_once_they_are_set(monkeypatch, settings, counts):
    monkeypatch.setenv("SECRET_KEY", "s" * 50)  # counts: a Redis on loopback

    assert warnings() == []

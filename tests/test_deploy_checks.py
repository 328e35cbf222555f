"""manage.py check --deploy warns about what a real deployment must set."""

from __future__ import annotations

from django.core.management import call_command


def warnings(capsys) -> str:
    call_command("check", deploy=True, fail_level="ERROR")
    return capsys.readouterr().err


def test_it_warns_without_a_shared_secret_key_or_redis(
    db, monkeypatch, settings, capsys
):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    settings.USAGE_REDIS_URL = ""

    output = warnings(capsys)

    assert "agentpost.W001" in output
    assert "agentpost.W002" in output


def test_it_is_quiet_once_they_are_set(db, monkeypatch, settings, capsys):
    monkeypatch.setenv("SECRET_KEY", "s" * 50)
    settings.USAGE_REDIS_URL = "redis://redis.internal:6379/1"

    output = warnings(capsys)

    assert "agentpost.W001" not in output
    assert "agentpost.W002" not in output

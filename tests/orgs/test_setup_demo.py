"""manage.py setup_demo: the demo org of `make run`, on the embedded defaults only."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command

from agentpost.orgs.models import Organization


@pytest.fixture
def var_dir(settings, tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    settings.VAR_DIR = tmp_path
    return tmp_path


def test_it_makes_the_demo_org_once(db, var_dir, capsys):
    call_command("setup_demo")
    call_command("setup_demo")

    assert Organization.objects.filter(name="Demo Org").count() == 1
    credentials = json.loads((var_dir / "demo-credentials.json").read_text())
    assert Organization.objects.filter(pk=credentials["org_id"]).exists()
    assert credentials["api_key"] in capsys.readouterr().out


def test_credentials_of_a_database_that_is_gone_are_made_anew(db, var_dir):
    (var_dir / "demo-credentials.json").write_text(
        json.dumps({"org_id": "org_gone", "api_key": "ap_gone"})
    )

    call_command("setup_demo")

    credentials = json.loads((var_dir / "demo-credentials.json").read_text())
    assert credentials["org_id"] != "org_gone"
    assert Organization.objects.filter(pk=credentials["org_id"]).exists()


def test_no_demo_org_in_a_configured_database(db, var_dir, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", "postgres://db.example/agentpost")

    call_command("setup_demo")

    assert not Organization.objects.exists()
    assert "no demo org" in capsys.readouterr().out

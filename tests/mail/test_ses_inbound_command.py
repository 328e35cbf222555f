"""manage.py ses_inbound: a local demo of SES inbound mail, signed for real."""

import json
import os
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command

from agentpost.mail.models import Message
from agentpost.mail.services import create_inbox
from tests.mail.conftest import FIXTURES

MIME_01 = FIXTURES / "mime" / "mime_01_multipart_mixed_rfc2231_filenames.eml"


@pytest.fixture
def demo(settings, tmp_path):
    settings.SES_INBOUND_DEMO_ENABLED = True
    settings.SES_INBOUND_DEMO_DIR = tmp_path / "ses-demo"
    settings.SNS_TRUSTED_CERT_FILES = [str(tmp_path / "ses-demo" / "cert.pem")]
    settings.SES_INBOUND_TOPIC_ARNS = [settings.SES_INBOUND_DEMO_TOPIC_ARN]
    settings.AGENTPOST_MAIL_DOMAIN = "agentpost.localhost"
    return settings


def test_it_stores_a_file_as_inbound_mail(api, org, demo, capsys):
    inbox = create_inbox(org=org, local_part="demo")
    call_command("ses_inbound", str(MIME_01), "--to", "demo@agentpost.localhost")
    assert (
        "Delivered 1 SES notification (2016 bytes): stored" in capsys.readouterr().out
    )

    listing = api.get(f"/inboxes/{inbox.id}/messages").json()["data"]
    assert [m["subject"] for m in listing] == ["Rechnung März – 3 Anhänge"]
    usage = api.get(f"/organizations/{org.id}/usage").json()
    assert usage["messages_received"]["current"] == 1
    # The demo key is private to this machine.
    assert (demo.SES_INBOUND_DEMO_DIR / "key.pem").stat().st_mode & 0o077 == 0


@pytest.mark.django_db(transaction=True)
def test_it_posts_over_http(live_server, demo, new_org):
    from tests.conftest import ApiClient

    inbox = create_inbox(org=new_org.org, local_part="demo")
    call_command(
        "ses_inbound",
        str(MIME_01),
        "--to",
        "demo@agentpost.localhost",
        "--url",
        f"{live_server.url}/inbound/ses",
    )
    api = ApiClient(new_org.api_key.token)
    listing = api.get(f"/inboxes/{inbox.id}/messages").json()["data"]
    assert [m["subject"] for m in listing] == ["Rechnung März – 3 Anhänge"]


@pytest.mark.django_db(transaction=True)
def test_a_server_that_does_not_trust_the_demo_key_refuses_it(
    live_server, demo, new_org, sns_hosts
):
    create_inbox(org=new_org.org, local_part="demo")
    demo.SNS_TRUSTED_CERT_FILES = []  # as in production
    with pytest.raises(CommandError, match="answered 403"):
        call_command(
            "ses_inbound",
            str(MIME_01),
            "--to",
            "demo@agentpost.localhost",
            "--url",
            f"{live_server.url}/inbound/ses",
        )
    assert not Message.objects.exists()
    assert sns_hosts.requested == []  # its URL is not an SNS host: never fetched


def test_without_the_demo_setting_it_stores_nothing(org, demo):
    create_inbox(org=org, local_part="demo")
    demo.SES_INBOUND_DEMO_ENABLED = False
    with pytest.raises(CommandError, match="SES_INBOUND_DEMO_ENABLED"):
        call_command("ses_inbound", str(MIME_01), "--to", "demo@agentpost.localhost")
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    ("database_url", "trusted"),
    [("postgres://db.example/agentpost", False), ("", True)],
)
def test_the_demo_key_is_trusted_only_on_the_embedded_defaults(
    tmp_path, database_url, trusted
):
    # Settings are read once per process, so ask a fresh one.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "SES_", "SNS_"))
    }
    env["AGENTPOST_VAR_DIR"] = str(tmp_path)
    if database_url:
        env["DATABASE_URL"] = database_url
    code = (
        "from django.conf import settings as s; import json; print(json.dumps("
        "[s.SES_INBOUND_DEMO_ENABLED, s.SNS_TRUSTED_CERT_FILES, "
        "s.SES_INBOUND_TOPIC_ARNS]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        env={**env, "DJANGO_SETTINGS_MODULE": "agentpost.settings"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    enabled, files, topics = json.loads(out)
    assert enabled is trusted
    assert (str(tmp_path / "ses-demo" / "cert.pem") in files) is trusted
    assert any(t.endswith(":agentpost-demo-inbound") for t in topics) is trusted

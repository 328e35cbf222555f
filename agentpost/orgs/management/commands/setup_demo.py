import json
import os

from django.conf import settings
from django.core.management.base import BaseCommand

from agentpost.mail.services import create_inbox
from agentpost.orgs.models import Organization
from agentpost.orgs.services import create_org

DEMO_OWNER = "owner@demo.agentpost.localhost"


class Command(BaseCommand):
    help = (
        "Create the demo org, its owner login, an inbox and an API key on first run; "
        "print the credentials (kept in var/demo-credentials.json) on every run."
    )

    def handle(self, *args, **options) -> None:
        if os.environ.get("DATABASE_URL"):
            # A demo org with a well-known password has no place in a real database.
            self.stdout.write("DATABASE_URL is set: no demo org (create_org makes one)")
            return
        path = settings.VAR_DIR / "demo-credentials.json"
        if path.exists():
            org_id = json.loads(path.read_text()).get("org_id")
            if not Organization.objects.filter(pk=org_id).exists():
                path.unlink()  # left from a database that is gone
        if not path.exists():
            password = os.environ.get("DEMO_PASSWORD") or "agentpost-demo"
            result = create_org(
                name="Demo Org", owner_email=DEMO_OWNER, owner_password=password
            )
            inbox = create_inbox(org=result.org, local_part="demo")
            credentials = {
                "org_id": result.org.id,
                "api_key": result.api_key.token,
                "inbox_id": inbox.id,
                "inbox_address": inbox.address,
                "console_login": DEMO_OWNER,
                "console_password": password,
            }
            path.write_text(json.dumps(credentials, indent=2))
            path.chmod(0o600)
        credentials = json.loads(path.read_text())
        self.stdout.write(
            "\nAgentPost demo (local only; credentials kept in "
            "var/demo-credentials.json):\n" + json.dumps(credentials, indent=2) + "\n"
        )

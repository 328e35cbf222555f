import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email

from agentpost.orgs.services import create_org


class Command(BaseCommand):
    help = "Create an org, its owner and an API key; print them as one JSON object."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name")
        parser.add_argument("--owner", required=True, help="The owner's email address.")
        parser.add_argument("--password", help="The owner's console password.")
        parser.add_argument("--plan", default="free")

    def handle(
        self, *args, name: str, owner: str, password: str | None, plan: str, **kw
    ):
        try:
            validate_email(owner)
        except ValidationError:
            raise CommandError(f"Not an email address: {owner!r}") from None
        if not name.strip():
            raise CommandError("The org needs a name.")

        result = create_org(
            name=name.strip(), owner_email=owner, owner_password=password, plan=plan
        )
        self.stdout.write(
            json.dumps(
                {
                    "org_id": result.org.id,
                    "name": result.org.name,
                    "owner": result.owner.email,
                    "api_key": result.api_key.token,
                    "api_key_id": result.api_key.key.id,
                }
            )
        )

import json
from pathlib import Path

import requests
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from agentpost.mail import ses, sns, sns_demo

POST_TIMEOUT_SECONDS = 30


class Command(BaseCommand):
    help = (
        "Deliver a MIME file as SES inbound mail, for local demos: wrap it in an "
        "SES Received notification inside an SNS envelope signed with the local "
        "demo key, and post it to --url, or hand it to the inbound service here "
        "when no URL is given. Needs SES_INBOUND_DEMO_ENABLED on the receiving side."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", type=Path, help="an RFC 5322 message (.eml)")
        parser.add_argument(
            "--to",
            action="append",
            required=True,
            help="an envelope recipient, e.g. demo@agentpost.localhost (repeatable)",
        )
        parser.add_argument(
            "--url", help="POST here, e.g. http://127.0.0.1:8000/inbound/ses"
        )

    def handle(self, *args, file: Path, to: list[str], url: str | None, **options):
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise CommandError(f"Cannot read {file}: {exc}") from None
        now = timezone.now()
        key = sns_demo.ensure_demo_key(settings.SES_INBOUND_DEMO_DIR, now=now)
        topic = settings.SES_INBOUND_DEMO_TOPIC_ARN
        envelope = sns_demo.signed_envelope(
            ses_notification=sns_demo.received_notification(
                raw=raw, recipients=to, topic_arn=topic, now=now
            ),
            topic_arn=topic,
            key=key,
            now=now,
        )
        status = self._post(url, envelope) if url else self._receive(envelope, now)
        self.stdout.write(f"Delivered 1 SES notification ({len(raw)} bytes): {status}")

    def _post(self, url: str, envelope: dict) -> str:
        try:
            response = requests.post(
                url,
                data=json.dumps(envelope).encode(),
                headers={
                    # What SNS sends: its own headers and a text/plain body.
                    "Content-Type": "text/plain; charset=UTF-8",
                    "x-amz-sns-message-type": envelope["Type"],
                    "x-amz-sns-message-id": envelope["MessageId"],
                    "x-amz-sns-topic-arn": envelope["TopicArn"],
                },
                timeout=POST_TIMEOUT_SECONDS,
            )
        except requests.RequestException as exc:
            raise CommandError(f"POST {url} failed: {exc}") from None
        if not response.ok:
            raise CommandError(
                f"POST {url} answered {response.status_code}: {response.text[:500]}"
            )
        return response.json().get("status", "")

    def _receive(self, envelope: dict, now) -> str:
        if not settings.SES_INBOUND_DEMO_ENABLED:
            raise CommandError(
                "SES_INBOUND_DEMO_ENABLED is off here, so the demo key is not trusted."
            )
        try:
            outcome = ses.receive_sns_message(
                envelope=envelope, message_type_header=sns.NOTIFICATION, now=now
            )
        except ses.Rejected as exc:
            raise CommandError(f"Refused ({exc.error_type}): {exc.message}") from None
        return outcome.status

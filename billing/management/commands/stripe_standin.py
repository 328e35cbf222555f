import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from billing.standin.server import StandinServer


class Command(BaseCommand):
    help = (
        "Run the Stripe stand-in on loopback for a local billing demo. Start the app "
        "with BILLING_ENABLED=true STRIPE_API_BASE=http://127.0.0.1:PORT "
        "STRIPE_SECRET_KEY=sk_test_... STRIPE_WEBHOOK_SECRET=whsec_..."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=int, default=12111)
        parser.add_argument(
            "--webhook-url",
            default=f"{settings.SITE_URL}/billing/webhook",
            help="Where to post signed events (default: this app's webhook).",
        )

    def handle(self, *args, port: int, webhook_url: str, **options) -> None:
        server = StandinServer(
            port=port,
            webhook_url=webhook_url,
            webhook_secret=settings.STRIPE_WEBHOOK_SECRET or None,
        ).start()
        self.stdout.write(f"Stripe stand-in on {server.url}, events to {webhook_url}")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        server.stop()

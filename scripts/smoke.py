"""
Walk the README's path on the embedded defaults, with real processes.

A fresh var directory (SQLite, file broker, local attachments), the migrations
applied from scratch, gunicorn and a Celery worker started as `make run` starts
them, then the API used over HTTP as a new user would. Exits non-zero on the first
thing that does not work. Run with `make smoke`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"smoke: timed out waiting for {what}")


def main() -> None:
    var = Path(tempfile.mkdtemp(prefix="agentpost-smoke-"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "CELERY_", "AGENTPOST_"))
    }
    env.update(AGENTPOST_VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="agentpost.settings")
    manage = [str(BIN / "python"), "manage.py"]
    run = lambda *args: subprocess.run(  # noqa: E731
        [*manage, *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )

    started = time.monotonic()
    run("migrate", "--no-input")
    print(
        "smoke: migrations applied to a fresh SQLite in "
        f"{time.monotonic() - started:.0f}s"
    )
    created = json.loads(
        run("create_org", "Smoke Test", "--owner", "smoke@example.test").stdout
    )

    port = free_port()
    processes = [
        subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "agentpost.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                str(BIN / "celery"),
                "-A",
                "agentpost",
                "worker",
                "--concurrency",
                "1",
                "--loglevel",
                "WARNING",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        base = f"http://127.0.0.1:{port}"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {created['api_key']}"
        org_id = created["org_id"]
        wait_for(lambda: session.get(f"{base}/openapi.json").ok, "the web server")

        inbox = session.post(f"{base}/inboxes", json={"local_part": "smoke"}).json()
        sent = session.post(
            f"{base}/inboxes/{inbox['id']}/messages",
            json={
                "to": ["someone@example.com"],
                "subject": "Smoke",
                "text": "hello",
                "attachments": [
                    {
                        "filename": "a.txt",
                        "content": base64.b64encode(b"A" * 512).decode(),
                    }
                ],
            },
        )
        assert sent.status_code == 202, sent.text
        message_id = sent.json()["id"]
        wait_for(
            lambda: (
                session.get(f"{base}/messages/{message_id}").json()["status"] == "sent"
            ),
            "the worker to send the message",
        )

        # Inbound: one SES notification, signed with the local demo key, over HTTP.
        eml = ROOT / "tests" / "fixtures" / "ses" / "mime_anymail_TEST_MIME_MESSAGE.eml"
        run(
            "ses_inbound",
            str(eml),
            "--to",
            inbox["address"],
            "--url",
            f"{base}/inbound/ses",
        )
        received = session.get(f"{base}/inboxes/{inbox['id']}/messages").json()["data"]
        assert any(m["direction"] == "inbound" for m in received), received

        usage = session.get(f"{base}/organizations/{org_id}/usage").json()
        assert usage["messages_sent"]["current"] == 1, usage
        assert usage["messages_received"]["current"] == 1, usage
        assert usage["storage_bytes"]["current"] == 512, usage
        assert usage["api_calls"]["current"] >= 5, usage
        print(
            "smoke: inbox, send through the worker, signed SES inbound and usage "
            "all work on SQLite"
        )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        shutil.rmtree(var, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

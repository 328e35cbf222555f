"""
Settings for AgentPost.

Every value comes from the environment and has an embedded default that works on a
fresh machine: SQLite in ./var, attachments on the local disk, mail printed to the
console, a Celery broker kept in files under ./var, billing off. Production sets
DATABASE_URL, CELERY_BROKER_URL, the mail and storage settings, and the Stripe keys.
"""

import secrets
from pathlib import Path

import environ
from celery.schedules import crontab

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

# Local state of the embedded defaults: the SQLite file, attachments, the file broker.
VAR_DIR = Path(env.str("AGENTPOST_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """Return SECRET_KEY from the environment, or one kept in ./var for local use."""
    if value := env.str("SECRET_KEY", default=""):
        return value
    path = VAR_DIR / "secret-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Links in emails and the Stripe stand-in's webhook target; follows WEB_PORT
# (the Procfile's port) locally.
SITE_URL = env.str(
    "SITE_URL", default=f"http://127.0.0.1:{env.int('WEB_PORT', default=8000)}"
).rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "djstripe",
    "agentpost.orgs",
    "agentpost.mail",
    "agentpost.events",
    "usage",
    "billing",
    "retention",
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "agentpost.middleware.RequestSizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "agentpost.urls"
WSGI_APPLICATION = "agentpost.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.context_processors.console",
            ],
        },
    },
]

# Database. SQLite shared by web, worker and beat needs a busy timeout and
# immediate transactions, or concurrent writers fail with "database is locked".
DATABASES = {
    "default": env.db(
        "DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'agentpost.sqlite3'}"
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # Tests use a file too: an in-memory database shared between the threads of
    # a live server (browser tests) fails with "database table is locked".
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/console/login/"
LOGIN_REDIRECT_URL = "/console/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env.path("STATIC_ROOT", default=str(VAR_DIR / "staticfiles"))
Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)
MEDIA_ROOT = env.path("MEDIA_ROOT", default=str(VAR_DIR / "media"))
MEDIA_URL = "/media/"
STORAGES = {
    # Attachments and raw MIME. Production points this at S3 (django-storages) with
    # ATTACHMENT_STORAGE_BACKEND and its own settings; the default is the local disk.
    "default": {
        "BACKEND": env.str(
            "ATTACHMENT_STORAGE_BACKEND",
            default="django.core.files.storage.FileSystemStorage",
        ),
    },
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage",
    },
}

# Mail. The console backend prints every message; production sets EMAIL_URL
# (smtp://user:password@host:587) or EMAIL_BACKEND.
EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default=EMAIL_CONFIG["EMAIL_BACKEND"])
DEFAULT_FROM_EMAIL = env.str(
    "DEFAULT_FROM_EMAIL", default="AgentPost <noreply@agentpost.localhost>"
)

# The domain on which orgs own inbox addresses (inbox@<domain>).
AGENTPOST_MAIL_DOMAIN = env.str("AGENTPOST_MAIL_DOMAIN", default="agentpost.localhost")

# Request bodies larger than this are refused with 413 before they are read.
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=25 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES
# A single attachment larger than this is refused with 400 (decoded size).
ATTACHMENT_MAX_BYTES = env.int("ATTACHMENT_MAX_BYTES", default=10 * 1024 * 1024)
# Recipients on one message (to + cc + bcc).
MESSAGE_MAX_RECIPIENTS = env.int("MESSAGE_MAX_RECIPIENTS", default=50)

# Amazon SES inbound through SNS (POST /inbound/ses). Only these topics are heard.
SES_INBOUND_TOPIC_ARNS = env.list("SES_INBOUND_TOPIC_ARNS", default=[])
# Signing certificates are fetched only over https from hosts matching this pattern.
SNS_CERT_HOST_PATTERN = env.str(
    "SNS_CERT_HOST_PATTERN", default=r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$"
)
# PEM files trusted without fetching (tests and local demos sign with their own key).
SNS_TRUSTED_CERT_FILES = env.list("SNS_TRUSTED_CERT_FILES", default=[])
# SNS bodies are at most 256 KB of message, which JSON escaping can double.
SES_INBOUND_MAX_BODY_BYTES = env.int("SES_INBOUND_MAX_BODY_BYTES", default=1024 * 1024)
# Mail that SES stored in S3 (over 150 KB, or an S3 receipt action) is fetched
# with boto3's usual credentials when this is on, and otherwise recorded as
# not fetched for staff to see.
SES_INBOUND_S3_ENABLED = env.bool("SES_INBOUND_S3_ENABLED", default=False)
SES_INBOUND_S3_REGION = env.str("SES_INBOUND_S3_REGION", default="") or None
SES_INBOUND_S3_ENDPOINT_URL = env.str("SES_INBOUND_S3_ENDPOINT_URL", default="") or None
SES_INBOUND_MAX_MESSAGE_BYTES = env.int(
    "SES_INBOUND_MAX_MESSAGE_BYTES", default=40 * 1024 * 1024
)
# `manage.py ses_inbound` signs demo notifications with a key it generates in
# var/ses-demo/. That key's certificate and the demo topic are trusted only when
# this is on, which by default is only on the embedded defaults (no DATABASE_URL):
# a production deployment never trusts it unless told to.
SES_INBOUND_DEMO_ENABLED = env.bool(
    "SES_INBOUND_DEMO_ENABLED", default=not env.str("DATABASE_URL", default="")
)
SES_INBOUND_DEMO_DIR = VAR_DIR / "ses-demo"
SES_INBOUND_DEMO_TOPIC_ARN = "arn:aws:sns:local:000000000000:agentpost-demo-inbound"
if SES_INBOUND_DEMO_ENABLED:
    SNS_TRUSTED_CERT_FILES.append(str(SES_INBOUND_DEMO_DIR / "cert.pem"))
    SES_INBOUND_TOPIC_ARNS.append(SES_INBOUND_DEMO_TOPIC_ARN)

# Billing (Stripe). Off by default: every org is on the self-hosted plan.
BILLING_ENABLED = env.bool("BILLING_ENABLED", default=False)
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")
STRIPE_API_VERSION = env.str("STRIPE_API_VERSION", default="2025-08-27.basil")
STRIPE_LIVE_MODE = env.bool("STRIPE_LIVE_MODE", default=False)
# Dunning: days between the first failed payment and suspension, and how many
# days before suspension the owners are reminded.
BILLING_GRACE_PERIOD_DAYS = env.int("BILLING_GRACE_PERIOD_DAYS", default=7)
BILLING_REMINDER_DAYS_BEFORE = env.int("BILLING_REMINDER_DAYS_BEFORE", default=2)
DJSTRIPE_SUBSCRIBER_MODEL = "orgs.Organization"
DJSTRIPE_FOREIGN_KEY_TO_FIELD = "id"
DJSTRIPE_USE_NATIVE_JSONFIELD = True
DJSTRIPE_WEBHOOK_VALIDATION = "verify_signature"
# Customers carry metadata org_id, so dj-stripe links them to their org.
DJSTRIPE_SUBSCRIBER_CUSTOMER_KEY = "org_id"

# Retention (see retention/). Policies may be 1 to RETENTION_MAX_DAYS long (one
# maximum for every plan for now); owners are warned RETENTION_NOTICE_DAYS before
# any deletion, and one warning covers what expires in the next
# RETENTION_WARNING_WINDOW_DAYS.
RETENTION_MAX_DAYS = env.int("RETENTION_MAX_DAYS", default=3650)
RETENTION_NOTICE_DAYS = env.int("RETENTION_NOTICE_DAYS", default=7)
RETENTION_WARNING_WINDOW_DAYS = env.int("RETENTION_WARNING_WINDOW_DAYS", default=30)
RETENTION_DELETE_BATCH_SIZE = env.int("RETENTION_DELETE_BATCH_SIZE", default=1000)
RETENTION_STATEMENT_TIMEOUT_MS = env.int(
    "RETENTION_STATEMENT_TIMEOUT_MS", default=30_000
)
# Files younger than this are never taken as orphans (uploads may be in flight).
RETENTION_ORPHAN_MIN_AGE_HOURS = env.int("RETENTION_ORPHAN_MIN_AGE_HOURS", default=24)
# An export holds off file deletion in its org until it ends or this passes.
RETENTION_EXPORT_LEASE_HOURS = env.int("RETENTION_EXPORT_LEASE_HOURS", default=12)
# Soft usage counts made outside a transaction commit without waiting for the
# WAL flush (usage/counting.py says why); a database server crash can then lose
# the last fraction of a second of them.
USAGE_SOFT_ASYNC_COMMIT = env.bool("USAGE_SOFT_ASYNC_COMMIT", default=True)
# With a Redis URL, api_calls are counted in Redis and flushed to the database
# every USAGE_FLUSH_SECONDS (usage/live.py); without one, in the database.
USAGE_REDIS_URL = env.str("USAGE_REDIS_URL", default="")
USAGE_REDIS_PREFIX = env.str("USAGE_REDIS_PREFIX", default="agentpost:usage:")
USAGE_REDIS_TIMEOUT_SECONDS = env.float("USAGE_REDIS_TIMEOUT_SECONDS", default=0.5)
USAGE_FLUSH_SECONDS = env.float("USAGE_FLUSH_SECONDS", default=5.0)

# Outgoing webhooks may target loopback only when this is on (local development).
WEBHOOKS_ALLOW_PRIVATE_TARGETS = env.bool(
    "WEBHOOKS_ALLOW_PRIVATE_TARGETS", default=False
)
# Webhook signing secrets are encrypted at rest with a key derived from this; the
# fallbacks still decrypt, so the key can be changed.
WEBHOOKS_ENCRYPTION_KEY = env.str("WEBHOOKS_ENCRYPTION_KEY", default=SECRET_KEY)
WEBHOOKS_ENCRYPTION_KEY_FALLBACKS = env.list(
    "WEBHOOKS_ENCRYPTION_KEY_FALLBACKS", default=[]
)

# Celery. The default broker keeps its queue in files under ./var, so web, worker
# and beat work together on one machine with no broker server.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue_dir = VAR_DIR / "celery-queue"
    _queue_dir.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
    }
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
# Each app's periodic work; django-celery-beat copies these into its tables.
CELERY_BEAT_SCHEDULE: dict = {
    # Dunning: reminders, then suspensions whose grace period ended.
    "billing-dunning": {
        "task": "billing.tasks.run_dunning",
        "schedule": crontab(minute=5),
    },
    "webhook-deliveries": {
        # Retries and deliveries whose worker died mid-attempt.
        "task": "agentpost.events.tasks.sweep_webhook_deliveries",
        "schedule": 30.0,
    },
    # Retention: warn, then delete what a matured warning covers, then sweep.
    "retention-warnings": {
        "task": "retention.tasks.send_retention_warnings",
        "schedule": crontab(hour=2, minute=10),
    },
    "retention-cleanup": {
        "task": "retention.tasks.run_retention_cleanup",
        "schedule": crontab(hour=2, minute=40),
    },
    "weekly-usage-summary": {
        "task": "console.tasks.send_weekly_usage_summaries",
        "schedule": crontab(day_of_week=1, hour=8, minute=0),
    },
    "retention-orphan-sweep": {
        "task": "retention.tasks.sweep_orphan_files",
        "schedule": crontab(hour=4, minute=10),
    },
    "usage-alerts": {
        "task": "usage.tasks.check_usage_alerts",
        "schedule": crontab(minute="*/15"),
    },
}
if USAGE_REDIS_URL:
    # Copies the counts kept in Redis into the database.
    CELERY_BEAT_SCHEDULE["usage-flush"] = {
        "task": "usage.tasks.flush_live_counts",
        "schedule": USAGE_FLUSH_SECONDS,
        "options": {"expires": USAGE_FLUSH_SECONDS},
    }

# REST framework.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["agentpost.orgs.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["agentpost.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "agentpost.api.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "AgentPost API",
    "DESCRIPTION": "An email API for AI agents: send and receive mail, read usage, "
    "manage billing, retention and webhooks.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # The docs page loads Redoc from our static files, never from a CDN.
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "WebhookEventTypeEnum": "agentpost.events.services.EVENT_TYPES",
    },
}

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "stripe": {"level": "WARNING"},
        # Stable names operators can route to files of their own.
        "agentpost.billing": {"level": LOG_LEVEL},
        "agentpost.retention": {"level": LOG_LEVEL},
    },
}

if not DEBUG:
    SESSION_COOKIE_HTTPONLY = True
    CSRF_COOKIE_HTTPONLY = False
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

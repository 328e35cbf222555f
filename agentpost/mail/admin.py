import base64
import binascii
from email.header import decode_header, make_header

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from agentpost.mail import ses
from agentpost.mail.models import Attachment, InboundNotification, Inbox, Message
from agentpost.mail.tasks import confirm_sns_subscription


@admin.register(Inbox)
class InboxAdmin(admin.ModelAdmin):
    list_display = ["address", "org", "created_at"]
    search_fields = ["address", "org__id", "org__name"]
    raw_id_fields = ["org"]


class AttachmentInline(admin.TabularInline):
    model = Attachment
    extra = 0
    fields = ["id", "filename", "content_type", "size_bytes", "sha256", "inline"]
    readonly_fields = fields
    can_delete = False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "org",
        "direction",
        "status",
        "from_address",
        "subject",
        "created_at",
    ]
    list_filter = ["direction", "status"]
    search_fields = ["id", "org__id", "from_address", "subject", "message_id_header"]
    raw_id_fields = ["org", "inbox"]
    readonly_fields = ["id", "created_at", "sent_at", "size_bytes", "raw"]
    inlines = [AttachmentInline]
    date_hierarchy = "created_at"


@admin.register(Attachment)
class AttachmentAdmin(admin.ModelAdmin):
    list_display = ["id", "org", "message", "filename", "content_type", "size_bytes"]
    search_fields = ["id", "org__id", "message__id", "filename", "sha256"]
    raw_id_fields = ["org", "message"]
    readonly_fields = ["id", "sha256", "size_bytes", "file", "created_at"]


RAW_PREVIEW_BYTES = 20_000


def _decoded(value: str) -> str:
    """Return a header with its RFC 2047 encoded words decoded, as best it can."""
    try:
        return str(make_header(decode_header(value)))
    except (LookupError, ValueError, UnicodeError):
        return value


@admin.register(InboundNotification)
class InboundNotificationAdmin(admin.ModelAdmin):
    """Every SNS message the inbound endpoint accepted, whatever became of it.

    Unrouted, not fetched and failed mail shows its sender, subject and raw MIME
    here, and "Process again" stores it once an inbox exists or S3 is set up.
    """

    list_display = [
        "received_at",
        "sns_type",
        "status",
        "recipients",
        "mail_from",
        "mail_subject",
        "message",
    ]
    list_filter = ["status", "sns_type"]
    search_fields = ["sns_message_id", "ses_message_id", "recipients", "topic_arn"]
    date_hierarchy = "received_at"
    actions = ["process_again"]
    fields = [
        "sns_message_id",
        "sns_type",
        "topic_arn",
        "status",
        "detail",
        "recipients",
        "mail_from",
        "mail_subject",
        "s3_location",
        "message",
        "received_at",
        "raw_download",
        "raw_preview",
        "notification",
    ]
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # read-only; "Process again" is the one way to change it

    @staticmethod
    def _ses(obj) -> dict:
        ses = (obj.notification or {}).get("ses")
        return ses if isinstance(ses, dict) else {}

    @admin.display(description="from")
    def mail_from(self, obj) -> str:
        mail = self._ses(obj).get("mail") or {}
        common = mail.get("commonHeaders") or {}
        senders = common.get("from") or []
        return _decoded(", ".join(map(str, senders))) or str(mail.get("source", ""))

    @admin.display(description="subject")
    def mail_subject(self, obj) -> str:
        mail = self._ses(obj).get("mail") or {}
        return _decoded(str((mail.get("commonHeaders") or {}).get("subject", "")))

    @admin.display(description="S3 location")
    def s3_location(self, obj) -> str:
        action = (self._ses(obj).get("receipt") or {}).get("action") or {}
        if action.get("type") != "S3":
            return ""
        return f"s3://{action.get('bucketName')}/{action.get('objectKey')}"

    def _raw(self, obj) -> bytes | None:
        if obj.raw:
            with obj.raw.open("rb") as handle:
                return handle.read()
        ses = self._ses(obj)
        content = ses.get("content")
        if not isinstance(content, str):
            return None
        action = (ses.get("receipt") or {}).get("action") or {}
        if str(action.get("encoding", "")).upper() == "BASE64":
            try:
                return base64.b64decode(content)
            except (binascii.Error, ValueError):
                return content.encode()
        return content.encode("utf-8", errors="replace")

    @admin.display(description="raw MIME")
    def raw_preview(self, obj) -> str:
        raw = self._raw(obj)
        if raw is None:
            return "-"
        text = raw[:RAW_PREVIEW_BYTES].decode("utf-8", errors="replace")
        more = (
            f"\n… {len(raw) - RAW_PREVIEW_BYTES} more bytes"
            if len(raw) > RAW_PREVIEW_BYTES
            else ""
        )
        return format_html(
            '<pre style="white-space: pre-wrap; max-height: 40em; overflow: auto">'
            "{}{}</pre>",
            text,
            more,
        )

    @admin.display(description="download")
    def raw_download(self, obj) -> str:
        if obj.pk is None or self._raw(obj) is None:
            return "-"
        url = reverse("admin:mail_inboundnotification_raw", args=[obj.pk])
        return format_html('<a href="{}">raw MIME (.eml)</a>', url)

    def get_urls(self):
        urls = [
            path(
                "<int:pk>/raw/",
                self.admin_site.admin_view(self.raw_view),
                name="mail_inboundnotification_raw",
            )
        ]
        return urls + super().get_urls()

    def raw_view(self, request, pk: int):
        obj = get_object_or_404(InboundNotification, pk=pk)
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        raw = self._raw(obj)
        if raw is None:
            raise Http404("No raw MIME for this notification.")
        # Served as a download, never rendered: it is a stranger's mail.
        response = HttpResponse(raw, content_type="application/octet-stream")
        response["Content-Disposition"] = f'attachment; filename="inbound-{obj.pk}.eml"'
        response["X-Content-Type-Options"] = "nosniff"
        return response

    def has_process_permission(self, request) -> bool:
        return request.user.has_perm("mail.change_inboundnotification")

    @admin.action(
        description="Process again (store unrouted, not fetched, failed)",
        permissions=["process"],
    )
    def process_again(self, request, queryset) -> None:
        now = timezone.now()
        stored = 0
        for record in queryset:
            if record.sns_type == "SubscriptionConfirmation":
                if record.status == InboundNotification.Status.FAILED:
                    confirm_sns_subscription.delay(record.pk)
                continue
            if record.status in ses.RETRYABLE:
                stored += ses.process_again(record_id=record.pk, now=now) == "stored"
        self.message_user(request, f"Stored {stored} of {queryset.count()} selected.")

from django.contrib import admin

from agentpost.mail.models import Attachment, InboundNotification, Inbox, Message


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


@admin.register(InboundNotification)
class InboundNotificationAdmin(admin.ModelAdmin):
    list_display = ["sns_message_id", "status", "recipients", "message", "received_at"]
    list_filter = ["status"]
    search_fields = ["sns_message_id", "ses_message_id", "recipients"]
    readonly_fields = [f.name for f in InboundNotification._meta.fields]

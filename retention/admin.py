from django.contrib import admin

from retention.models import (
    ExportLease,
    MissingFile,
    PendingFileDeletion,
    RetentionNotice,
    RetentionPolicy,
    RetentionRun,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    # Rows written by the retention workers; staff read them, never edit them.
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(RetentionPolicy)
class RetentionPolicyAdmin(ReadOnlyAdmin):
    list_display = ["org", "retention_days", "warned_through", "updated_at"]
    search_fields = ["org__id", "org__name"]


@admin.register(RetentionNotice)
class RetentionNoticeAdmin(ReadOnlyAdmin):
    list_display = [
        "org",
        "retention_days",
        "cutoff",
        "messages",
        "bytes",
        "sent_at",
        "delete_after",
        "superseded_at",
    ]
    search_fields = ["org__id", "org__name"]
    date_hierarchy = "created_at"


@admin.register(RetentionRun)
class RetentionRunAdmin(ReadOnlyAdmin):
    list_display = [
        "org",
        "cutoff",
        "status",
        "messages",
        "attachments",
        "bytes",
        "started_at",
        "finished_at",
    ]
    list_filter = ["status"]
    search_fields = ["org__id", "org__name"]
    date_hierarchy = "started_at"


@admin.register(MissingFile)
class MissingFileAdmin(ReadOnlyAdmin):
    list_display = ["name", "kind", "object_id", "org", "first_seen_at", "resolved_at"]
    list_filter = ["kind", ("resolved_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "object_id", "org__id"]


@admin.register(PendingFileDeletion)
class PendingFileDeletionAdmin(ReadOnlyAdmin):
    list_display = ["name", "org", "run", "created_at"]
    search_fields = ["name", "org__id"]


@admin.register(ExportLease)
class ExportLeaseAdmin(ReadOnlyAdmin):
    list_display = ["org", "started_at", "expires_at", "finished_at"]
    search_fields = ["org__id"]

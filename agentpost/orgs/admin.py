from django.contrib import admin

from agentpost.orgs.models import ApiKey, AuditEntry, Membership, Organization


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ["user"]


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    # The secret is never stored; the hash is not shown either.
    fields = ["id", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "id",
        "plan",
        "billing_state",
        "grace_deadline",
        "created_at",
    ]
    list_filter = ["plan", "billing_state"]
    search_fields = ["id", "name", "billing_email", "memberships__user__email"]
    readonly_fields = ["id", "created_at"]
    inlines = [MembershipInline, ApiKeyInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "org", "role", "weekly_summary", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "org__id", "org__name"]
    raw_id_fields = ["user", "org"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["id", "org", "name", "prefix", "last_used_at", "revoked_at"]
    search_fields = ["id", "prefix", "org__id", "org__name"]
    exclude = ["hashed_token"]
    readonly_fields = [
        "id",
        "org",
        "prefix",
        "created_by",
        "created_at",
        "last_used_at",
    ]

    def has_add_permission(self, request) -> bool:
        # A key made here could not show its secret to anyone; owners make keys
        # in the console or with `manage.py create_org`.
        return False


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["created_at", "org", "action", "actor", "reason"]
    list_filter = ["action"]
    search_fields = ["org__id", "org__name", "action"]
    readonly_fields = [f.name for f in AuditEntry._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

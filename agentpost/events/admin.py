from django.contrib import admin

from agentpost.events.models import Event


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["id", "org", "type", "created_at"]
    list_filter = ["type"]
    search_fields = ["id", "org__id", "org__name"]
    readonly_fields = ["id", "org", "type", "data", "created_at"]

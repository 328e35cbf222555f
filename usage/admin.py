from django.contrib import admin

from usage.models import UsageCounter


@admin.register(UsageCounter)
class UsageCounterAdmin(admin.ModelAdmin):
    list_display = ["org", "counter", "period_start", "value"]
    list_filter = ["counter"]
    search_fields = ["org__id", "org__name"]
    readonly_fields = ["org", "counter", "period_start", "value"]

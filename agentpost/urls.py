from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularRedocView

from agentpost.events import api as events_api
from agentpost.mail import api as mail_api
from agentpost.mail import views as mail_views
from agentpost.orgs import api as orgs_api
from retention import api as retention_api
from usage import api as usage_api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("console/", include("console.urls")),
    path("openapi.json", SpectacularJSONAPIView.as_view(), name="openapi"),
    path("docs", SpectacularRedocView.as_view(url_name="openapi"), name="docs"),
    # Mail
    path("inboxes", mail_api.InboxListView.as_view()),
    path("inboxes/<str:inbox_id>/messages", mail_api.InboxMessagesView.as_view()),
    path("messages/<str:message_id>", mail_api.MessageView.as_view()),
    path(
        "messages/<str:message_id>/attachments/<str:attachment_id>",
        mail_api.AttachmentFileView.as_view(),
    ),
    path("inbound/ses", mail_views.ses_inbound, name="ses-inbound"),
    # Webhooks
    path("webhooks", events_api.WebhookListView.as_view()),
    path("webhooks/<str:webhook_id>", events_api.WebhookView.as_view()),
    path(
        "webhooks/<str:webhook_id>/rotate-secret",
        events_api.WebhookRotateSecretView.as_view(),
    ),
    path(
        "webhooks/<str:webhook_id>/deliveries",
        events_api.WebhookDeliveriesView.as_view(),
    ),
    path(
        "webhooks/<str:webhook_id>/deliveries/<str:delivery_id>/replay",
        events_api.WebhookReplayView.as_view(),
    ),
    # Billing (404 unless BILLING_ENABLED)
    path("billing/", include("billing.urls")),
    # Organizations
    path("organizations/<str:org_id>", orgs_api.OrganizationView.as_view()),
    path("organizations/<str:org_id>/usage", usage_api.UsageView.as_view()),
    path(
        "organizations/<str:org_id>/retention-policy",
        retention_api.RetentionPolicyView.as_view(),
    ),
    path("organizations/<str:org_id>/export", retention_api.ExportView.as_view()),
    path(
        "organizations/<str:org_id>/usage/history",
        usage_api.UsageHistoryView.as_view(),
    ),
    path("organizations/<str:org_id>/settings", usage_api.SettingsView.as_view()),
]

handler404 = "agentpost.views.not_found"
handler500 = "agentpost.views.server_error"

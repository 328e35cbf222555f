from django.contrib.auth import views as auth_views
from django.urls import path

from console import views

app_name = "console"

urlpatterns = [
    path("", views.home, name="home"),
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="console/login.html"),
        name="login",
    ),
    path(
        "logout/",
        auth_views.LogoutView.as_view(next_page="console:login"),
        name="logout",
    ),
    path("no-org/", views.no_org, name="no_org"),
    path("switch/", views.switch_org, name="switch_org"),
    path("usage/", views.usage_page, name="usage"),
    path("usage.json", views.usage_json, name="usage_json"),
    path("usage/weekly-email/", views.weekly_summary_toggle, name="weekly_summary"),
    path("billing/", views.billing_page, name="billing"),
    path("billing/checkout/", views.billing_checkout, name="billing_checkout"),
    path("billing/change/", views.billing_change, name="billing_change"),
    path("billing/cancel/", views.billing_cancel, name="billing_cancel"),
    path("billing/resume/", views.billing_resume, name="billing_resume"),
    path("billing/portal/", views.billing_portal, name="billing_portal"),
    path("keys/", views.keys_page, name="keys"),
    path("keys/create/", views.keys_create, name="keys_create"),
    path("keys/<str:key_id>/revoke/", views.keys_revoke, name="keys_revoke"),
    path("retention/", views.retention_page, name="retention"),
    path("retention/export/", views.retention_export, name="retention_export"),
    path("webhooks/", views.webhooks_page, name="webhooks"),
    path("webhooks/create/", views.webhooks_create, name="webhooks_create"),
    path(
        "webhooks/<str:endpoint_id>/delete/",
        views.webhooks_delete,
        name="webhooks_delete",
    ),
    path(
        "webhooks/deliveries/<str:delivery_id>/replay/",
        views.webhooks_replay,
        name="webhooks_replay",
    ),
]

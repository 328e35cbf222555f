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
    path("billing/", views.billing_page, name="billing"),
    path("billing/checkout/", views.billing_checkout, name="billing_checkout"),
    path("billing/change/", views.billing_change, name="billing_change"),
    path("billing/cancel/", views.billing_cancel, name="billing_cancel"),
    path("billing/resume/", views.billing_resume, name="billing_resume"),
    path("billing/portal/", views.billing_portal, name="billing_portal"),
    path("keys/", views.keys_page, name="keys"),
    path("keys/create/", views.keys_create, name="keys_create"),
    path("keys/<str:key_id>/revoke/", views.keys_revoke, name="keys_revoke"),
]

from django.urls import path

from billing import api, views

urlpatterns = [
    path("checkout", api.CheckoutView.as_view()),
    path("portal", api.PortalView.as_view()),
    path("subscription", api.SubscriptionView.as_view()),
    path("subscription/change-plan", api.ChangePlanView.as_view()),
    path("subscription/cancel", api.CancelView.as_view()),
    path("subscription/resume", api.ResumeView.as_view()),
    path("webhook", views.stripe_webhook),
]

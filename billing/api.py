from django.conf import settings
from django.core.validators import URLValidator
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from agentpost.api import ApiError, OrgAPIView, StrictSerializer
from billing import services, stripe_api
from billing.models import OrgSubscription, PlanPrice
from usage.models import Plan

HTTP_URL = URLValidator(schemes=["http", "https"])


class ReturnUrlField(serializers.CharField):
    def __init__(self, **kwargs) -> None:
        super().__init__(max_length=2000, validators=[HTTP_URL], **kwargs)


class CheckoutIn(StrictSerializer):
    plan = serializers.CharField(max_length=50)
    success_url = ReturnUrlField(required=False)
    cancel_url = ReturnUrlField(required=False)


class PortalIn(StrictSerializer):
    return_url = ReturnUrlField(required=False)


class ChangePlanIn(StrictSerializer):
    plan = serializers.CharField(max_length=50)
    preview = serializers.BooleanField(default=False)
    proration_date = serializers.IntegerField(
        required=False,
        min_value=0,
        help_text="Unix time from a preview, so the change costs what was shown.",
    )


class CancelIn(StrictSerializer):
    at_period_end = serializers.BooleanField(default=True)


class BillingView(OrgAPIView):
    """Base of /billing/*: 404 while billing is off; usable by a suspended org."""

    allowed_when_suspended = True

    def initial(self, request, *args, **kwargs) -> None:
        if not settings.BILLING_ENABLED:
            raise ApiError(
                404, "billing_disabled", "Billing is not enabled on this server."
            )
        super().initial(request, *args, **kwargs)

    def handle_exception(self, exc):
        if isinstance(exc, services.BillingConflict):
            exc = ApiError(409, exc.error_type, exc.message)
        elif isinstance(exc, stripe_api.BillingProviderError):
            exc = ApiError(
                exc.status if exc.status in (400, 402, 404) else 502,
                "billing_provider_error",
                exc.message,
            )
        return super().handle_exception(exc)

    @property
    def client_key(self) -> str | None:
        return self.request.headers.get("Idempotency-Key")

    def default_url(self, state: str) -> str:
        return f"{settings.SITE_URL}/console/billing/?checkout={state}"


def plan_name(code: str) -> str:
    plan = Plan.objects.filter(code=code).first()
    return plan.name if plan else code.title()


def subscription_body(org) -> dict:
    account = OrgSubscription.objects.filter(org=org).first()
    price = PlanPrice.objects.filter(plan_id=org.plan).first()
    return {
        "status": account.status if account and account.status else "none",
        "plan": {
            "code": org.plan,
            "name": price.plan.name if price else plan_name(org.plan),
            "price_cents": price.unit_amount_cents if price else 0,
            "currency": "usd",
            "interval": price.interval if price else None,
        },
        "current_period_start": org.current_period_start,
        "current_period_end": org.current_period_end,
        "cancel_at_period_end": bool(account and account.cancel_at_period_end),
        "billing_state": org.billing_state,
        "grace_deadline": org.grace_deadline,
        "next_invoice_amount_cents": services.upcoming_amount_cents(org=org),
    }


class CheckoutView(BillingView):
    @extend_schema(request=CheckoutIn, responses=OpenApiTypes.OBJECT)
    def post(self, request):
        data = CheckoutIn.validate_input(request.data)
        url = services.start_checkout(
            org=self.org,
            plan_code=data["plan"],
            success_url=data.get("success_url") or self.default_url("success"),
            cancel_url=data.get("cancel_url") or self.default_url("canceled"),
            client_key=self.client_key,
        )
        return Response({"url": url}, status=201)


class PortalView(BillingView):
    @extend_schema(request=PortalIn, responses=OpenApiTypes.OBJECT)
    def post(self, request):
        data = PortalIn.validate_input(request.data)
        url = services.portal_url(
            org=self.org,
            return_url=data.get("return_url")
            or f"{settings.SITE_URL}/console/billing/",
        )
        return Response({"url": url}, status=201)


class SubscriptionView(BillingView):
    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request):
        return Response(subscription_body(self.org))


class ChangePlanView(BillingView):
    @extend_schema(request=ChangePlanIn, responses=OpenApiTypes.OBJECT)
    def post(self, request):
        data = ChangePlanIn.validate_input(request.data)
        change = services.change_plan(
            org=self.org,
            plan_code=data["plan"],
            preview=data["preview"],
            proration_date=data.get("proration_date"),
            now=timezone.now(),
            actor=request.user,
            client_key=self.client_key,
        )
        self.org.refresh_from_db()
        return Response(
            {
                "plan": change.plan_code,
                "preview": not change.applied,
                "amount_due_now_cents": change.amount_due_now_cents,
                "currency": change.currency,
                "proration_date": change.proration_date,
                "subscription": subscription_body(self.org),
            }
        )


class CancelView(BillingView):
    @extend_schema(request=CancelIn, responses=OpenApiTypes.OBJECT)
    def post(self, request):
        data = CancelIn.validate_input(request.data)
        services.cancel_subscription(
            org=self.org,
            at_period_end=data["at_period_end"],
            now=timezone.now(),
            actor=request.user,
            client_key=self.client_key,
        )
        self.org.refresh_from_db()
        return Response(subscription_body(self.org))


class ResumeView(BillingView):
    @extend_schema(request=None, responses=OpenApiTypes.OBJECT)
    def post(self, request):
        services.resume_subscription(
            org=self.org,
            now=timezone.now(),
            actor=request.user,
            client_key=self.client_key,
        )
        self.org.refresh_from_db()
        return Response(subscription_body(self.org))

from django.db import migrations

# The starting prices of the paid plans; staff change them in the admin and run
# `manage.py billing_sync_plans` to create the matching prices in Stripe.
PRICES = [
    ("starter", "agentpost_starter_monthly", 2000, 1),
    ("pro", "agentpost_pro_monthly", 9000, 2),
]


def seed_prices(apps, schema_editor):
    Plan = apps.get_model("usage", "Plan")
    PlanPrice = apps.get_model("billing", "PlanPrice")
    for code, lookup_key, cents, order in PRICES:
        if Plan.objects.filter(code=code).exists():
            PlanPrice.objects.get_or_create(
                plan_id=code,
                defaults={
                    "lookup_key": lookup_key,
                    "unit_amount_cents": cents,
                    "sort_order": order,
                },
            )


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0001_initial"),
        ("usage", "0002_seed_plans"),
    ]

    operations = [migrations.RunPython(seed_prices, migrations.RunPython.noop)]

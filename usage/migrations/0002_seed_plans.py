from django.db import migrations

from usage.plans import seed_plans


def seed(apps, schema_editor):
    seed_plans(apps.get_model("usage", "Plan"), apps.get_model("usage", "PlanLimit"))


class Migration(migrations.Migration):
    dependencies = [("usage", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]

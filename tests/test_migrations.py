from io import StringIO

from django.core.management import call_command


def test_the_migrations_match_the_models(db):
    # The suite builds its database from the models (--no-migrations); this keeps
    # the migrations honest. CI also applies them to a fresh database.
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()

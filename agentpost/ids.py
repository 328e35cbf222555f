"""Public identifiers: a short type prefix and a ULID, so ids sort by creation time."""

from functools import partial

from django.db import models
from ulid import ULID

PREFIX_LENGTH = 8
ID_MAX_LENGTH = PREFIX_LENGTH + 26


def new_id(prefix: str) -> str:
    """Return a new public id such as ``org_01JQ3ZV6...``."""
    return f"{prefix}_{ULID()}"


def PrefixedIdField(prefix: str) -> models.CharField:  # noqa: N802 (reads like a field)
    """Return a primary key field holding ids with this prefix."""
    return models.CharField(
        primary_key=True,
        max_length=ID_MAX_LENGTH,
        default=partial(new_id, prefix),
        editable=False,
    )

"""
The seam between the core and usage accounting.

The core (orgs, mail, events) announces what it is about to do or has done, such as
"one message sent" or "4,096 bytes stored", by calling ``charge`` or ``credit``. The
``usage`` app installs the meter that counts and enforces limits; the core never
imports it. Without a meter installed, nothing is counted or refused.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

MESSAGES_SENT = "messages_sent"
MESSAGES_RECEIVED = "messages_received"
STORAGE_BYTES = "storage_bytes"
API_CALLS = "api_calls"
WEBHOOK_DELIVERIES = "webhook_deliveries"
COUNTERS = (
    MESSAGES_SENT,
    MESSAGES_RECEIVED,
    STORAGE_BYTES,
    API_CALLS,
    WEBHOOK_DELIVERIES,
)


class QuotaExceeded(Exception):
    """A hard limit refuses this much more of a counter in the current period."""

    def __init__(
        self, *, counter: str, limit: int, current: int, resets_at: datetime | None
    ) -> None:
        super().__init__(f"{counter} limit of {limit} reached")
        self.counter = counter
        self.limit = limit
        self.current = current
        self.resets_at = resets_at


class UsageUnavailable(Exception):
    """Whether a limit allows this could not be told; the caller should retry."""


@dataclass(frozen=True)
class Charge:
    """What a charge left behind, for response headers.

    ``over_limit`` is true when an unenforced charge went past a hard limit (the
    caller holds what it cannot refuse, such as inbound mail).
    """

    counter: str
    current: int
    limit: int | None
    resets_at: datetime | None
    over_limit: bool = False


class Meter(Protocol):
    def charge(
        self, *, org_id: str, counter: str, amount: int, now: datetime, enforce: bool
    ) -> Charge | None: ...

    def credit(
        self, *, org_id: str, counter: str, amount: int, now: datetime
    ) -> None: ...


class _NullMeter:
    def charge(self, **kwargs) -> None:
        return None

    def credit(self, **kwargs) -> None:
        return None


_meter: Meter = _NullMeter()
# The charges made while serving one API request, so that its response can carry
# the quota state of the counter nearest its limit (see agentpost.api).
_collected: ContextVar[list[Charge] | None] = ContextVar("charges", default=None)


def install(meter: Meter) -> None:
    """Install the meter that all charges go through (called by usage's AppConfig)."""
    global _meter
    _meter = meter


def charge(
    *, org_id: str, counter: str, now: datetime, amount: int = 1, enforce: bool = True
) -> Charge | None:
    """Count ``amount`` of ``counter`` for the org; raise QuotaExceeded at a hard limit.

    With ``enforce=False`` the amount is counted even past a hard limit (for things
    that cannot be refused, such as inbound mail SES has already accepted).
    """
    assert counter in COUNTERS, counter
    collected = _collected.get()
    try:
        result = _meter.charge(
            org_id=org_id, counter=counter, amount=amount, now=now, enforce=enforce
        )
    except QuotaExceeded as exc:
        if collected is not None:
            collected.append(
                Charge(
                    counter=exc.counter,
                    current=exc.current,
                    limit=exc.limit,
                    resets_at=exc.resets_at,
                )
            )
        raise
    if collected is not None and result is not None:
        collected.append(result)
    return result


def collect_charges() -> list[Charge]:
    """Start collecting this context's charges into the returned list."""
    charges: list[Charge] = []
    _collected.set(charges)
    return charges


def stop_collecting() -> None:
    _collected.set(None)


def credit(*, org_id: str, counter: str, now: datetime, amount: int) -> None:
    """Give back ``amount`` of a level counter (storage freed by a deletion)."""
    assert counter in COUNTERS, counter
    _meter.credit(org_id=org_id, counter=counter, amount=amount, now=now)

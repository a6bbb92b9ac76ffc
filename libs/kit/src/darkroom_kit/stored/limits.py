"""webhook-dispatch's shared limits: a rate window per endpoint and second (collection
``webhook_rate_windows``) and the concurrency slots of each endpoint (``webhook_slots``)."""

from __future__ import annotations

from darkroom_kit.stored._base import Record


class RateWindow(Record):
    """The attempts made to an endpoint in one second, over every replica."""

    endpoint_id: str
    window_ms: int
    n: int = 0


class Slot(Record):
    """One place of an endpoint's ``max_concurrency``, held under a lease."""

    endpoint_id: str
    k: int = 0
    until_ms: int = 0
    holder: str | None = None

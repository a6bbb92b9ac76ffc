"""Time as darkroom stores it: integer epoch milliseconds (UTC), ISO 8601 in JSON.

Integers compare and sort the same on every MongoDB-compatible server; the nx-27017 stand-in stores
a datetime given to ``$set`` as a string, which would silently break range queries.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ms_to_iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def datetime_to_ms(value: datetime) -> int:
    """An aware datetime as epoch milliseconds."""
    return int(value.timestamp() * 1000)


def iso_to_ms(value: str) -> int | None:
    """The inverse of :func:`ms_to_iso`, for any ISO 8601 time with a zone (None if it is not)."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return datetime_to_ms(parsed)

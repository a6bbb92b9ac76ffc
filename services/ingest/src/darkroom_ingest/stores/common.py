"""Helpers shared by the stores: pages, conflicts, indexes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from darkroom_kit import records
from darkroom_kit.messaging import Envelope
from darkroom_kit.mongo import Collection, Database, Document
from darkroom_kit.operations import EXCLUSIVE
from pymongo import ASCENDING, DESCENDING

NEWEST_FIRST = [("created_ms", DESCENDING), ("_id", DESCENDING)]


async def page_of(
    col: Collection,
    query: Document,
    projection: Document | None,
    sort: list[tuple[str, int]],
    limit: int,
    offset: int,
) -> tuple[list[Document], int]:
    """One page of a list and the total it is a page of (the _id in ``sort`` keeps equal keys
    in a stable order across pages)."""
    total = await col.count_documents(query)
    cursor = col.find(query, projection).sort(sort).skip(offset).limit(limit)
    return [d async for d in cursor], total


# What adds messages to a document's outbox in an update (``Outbox.push`` of the writer).
Push = Callable[[str, Sequence[Envelope], int], dict[str, Any]]


class Conflict(Exception):
    """A unique value is taken."""


class EventClosed(Exception):
    """The event was archived: it takes no photos."""


class CapExceeded(Exception):
    def __init__(self, cap: int, count: int) -> None:
        super().__init__(f"cap {cap}, already {count}")
        self.cap = cap
        self.count = count


async def ensure_indexes(db: Database) -> None:
    await db[records.TOKENS].create_index([("hash", ASCENDING)], unique=True)
    await db[records.EVENTS].create_index([("slug", ASCENDING)], unique=True)
    # The photo-count reconciliation's periodic pass (darkroom_ingest.counting).
    await db[records.EVENTS].create_index([("reconcile_due_ms", ASCENDING)], sparse=True)
    photos = db[records.PHOTOS]
    await photos.create_index([("event_id", ASCENDING), ("filename", ASCENDING)], unique=True)
    await photos.create_index([("event_id", ASCENDING), ("created_ms", DESCENDING)])
    # A repeated request (same Idempotency-Key) finds the photos its first run stored.
    await photos.create_index([("event_id", ASCENDING), ("request_key", ASCENDING)], sparse=True)
    # Duplicates (darkroom_ingest.duplicates): by content, by size, and the key copies clash on.
    await photos.create_index([("event_id", ASCENDING), ("sha256", ASCENDING)])
    await photos.create_index([("event_id", ASCENDING), ("size", ASCENDING)])
    await photos.create_index([("content_key", ASCENDING)], unique=True, sparse=True)
    # metadata-repair counts what one repair did (after a restart) by the photos it marked.
    await photos.create_index([("repaired_by", ASCENDING)], sparse=True)
    await db[records.WEBHOOK_ENDPOINTS].create_index([("enabled", ASCENDING)])
    await db[records.WEBHOOK_DELIVERIES].create_index(
        [("endpoint_id", ASCENDING), ("created_ms", DESCENDING)]
    )
    await db[records.IDEMPOTENCY].create_index([("expires_at", ASCENDING)], expireAfterSeconds=0)
    # One open archive per event, whatever requests arrive at once (Operations.create).
    await db[records.OPERATIONS].create_index([(EXCLUSIVE, ASCENDING)], unique=True, sparse=True)

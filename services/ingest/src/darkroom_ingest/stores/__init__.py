"""MongoDB adapters of upload-ingest's records, one module per collection. Vendor errors become
domain errors here."""

from darkroom_ingest.stores.common import (
    NEWEST_FIRST,
    CapExceeded,
    Conflict,
    EventClosed,
    ensure_indexes,
    page_of,
)
from darkroom_ingest.stores.events import EventStore
from darkroom_ingest.stores.idempotency import IdempotencyStore
from darkroom_ingest.stores.photos import PHOTO_SORT_FIELDS, PhotoStore
from darkroom_ingest.stores.tokens import TokenStore
from darkroom_ingest.stores.webhooks import WebhookStore

__all__ = [
    "NEWEST_FIRST",
    "PHOTO_SORT_FIELDS",
    "CapExceeded",
    "Conflict",
    "EventClosed",
    "EventStore",
    "IdempotencyStore",
    "PhotoStore",
    "TokenStore",
    "WebhookStore",
    "ensure_indexes",
    "page_of",
]

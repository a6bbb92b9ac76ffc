"""The transactional outbox without transactions.

A record and the messages that announce it are written in ONE document write: the messages sit in
the document's ``outbox`` map, with ``outbox_due_ms`` saying when a relay may take them over.
After the write the writer publishes them (confirmed) and clears them. If it dies in between, the
relay finds the document once ``outbox_due_ms`` has passed and publishes them again. So nothing is
published before it is durable, and nothing durable goes unpublished; consumers dedupe the rare
double publish on the message id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pymongo import UpdateOne

from darkroom_kit.clock import now_ms
from darkroom_kit.messaging import Envelope, Publisher
from darkroom_kit.mongo import Collection

log = logging.getLogger(__name__)

OUTBOX = "outbox"
OUTBOX_DUE = "outbox_due_ms"

# A document whose messages the broker refused is tried again after this long.
REFUSED_RETRY_MS = 2_000
# Refusals in a row after which a relay pass stops (the broker is away, not one message bad).
REFUSALS_PER_PASS = 3

AfterFlush = Callable[[dict[str, Any]], Awaitable[None]]


Pending = dict[str, dict[str, Any]]


def entries(exchange: str, envelopes: Sequence[Envelope]) -> Pending:
    """Pending messages keyed by message id. A map, not an array: adding one is a ``$set`` of its
    own field and clearing one an ``$unset``, so concurrent writers never overwrite each other
    (and no server has to get ``$push`` of sub-documents right)."""
    return {e.id: {**e.model_dump(), "exchange": exchange} for e in envelopes}


def fields(exchange: str, envelopes: Sequence[Envelope], grace_ms: int) -> dict[str, Any]:
    """The fields a new document carries so that its messages are published exactly as it lands."""
    return {OUTBOX: entries(exchange, envelopes), OUTBOX_DUE: now_ms() + grace_ms}


def push(exchange: str, envelopes: Sequence[Envelope], grace_ms: int) -> dict[str, Any]:
    """Update operators that add messages to an existing document's outbox."""
    added = {f"{OUTBOX}.{mid}": entry for mid, entry in entries(exchange, envelopes).items()}
    return {"$set": {**added, OUTBOX_DUE: now_ms() + grace_ms}}


def pending_of(doc: dict[str, Any]) -> Pending:
    value = doc.get(OUTBOX)
    return value if isinstance(value, dict) else {}


def _envelope(entry: dict[str, Any]) -> tuple[str, Envelope]:
    return entry["exchange"], Envelope(
        id=entry["id"], type=entry["type"], time=entry["time"], data=entry["data"]
    )


class Outbox:
    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    async def flush(self, collection: Collection, doc_id: str, pending: Pending) -> bool:
        """Publish a document's pending messages and clear them. False when the broker refused:
        the messages stay in the document and the relay publishes them later."""
        return await self.flush_many(collection, {doc_id: pending})

    async def flush_many(self, collection: Collection, pending: dict[str, Pending]) -> bool:
        """Publish the pending messages of many documents (every confirm in flight together) and
        clear them in one bulk write. False when the broker refused: see :meth:`flush`."""
        pending = {doc_id: p for doc_id, p in pending.items() if p}
        if not pending:
            return True
        ordered = sorted(
            (e for p in pending.values() for e in p.values()), key=lambda e: (e["time"], e["id"])
        )
        try:
            await asyncio.gather(
                *(self._publisher.publish(ex, env) for ex, env in map(_envelope, ordered))
            )
        except Exception:
            log.warning(
                "outbox publish failed; left to the relay",
                extra={"doc_ids": list(pending)[:20]},
                exc_info=True,
            )
            return False
        await collection.bulk_write(
            [
                UpdateOne({"_id": doc_id}, {"$unset": {f"{OUTBOX}.{mid}": "" for mid in p}})
                for doc_id, p in pending.items()
            ],
            ordered=False,
        )
        # The due time goes only once nothing else is pending (a writer may have added more).
        await collection.update_many(
            {"_id": {"$in": list(pending)}, OUTBOX: {}}, {"$unset": {OUTBOX_DUE: ""}}
        )
        return True


class OutboxRelay:
    """Republishes what writers left behind. Safe with many replicas: each claims a document by
    moving its due time forward before publishing."""

    def __init__(
        self,
        outbox: Outbox,
        collections: Sequence[Collection],
        *,
        lease_ms: int = 30_000,
        after_flush: dict[str, AfterFlush] | None = None,
    ) -> None:
        self._outbox = outbox
        self._collections = collections
        self._lease_ms = lease_ms
        self._after_flush = after_flush or {}

    async def run_once(self, limit: int = 500) -> int:
        relayed = 0
        for collection in self._collections:
            failures = 0
            for _ in range(limit):
                now = now_ms()
                claimed_until = now + self._lease_ms
                doc = await collection.find_one_and_update(
                    {OUTBOX_DUE: {"$lte": now}}, {"$set": {OUTBOX_DUE: claimed_until}}
                )
                if doc is None:
                    break
                pending = pending_of(doc)
                if pending and not await self._outbox.flush(collection, doc["_id"], pending):
                    # Refused: due again after a short wait, not after the whole claim (30 s),
                    # so a broker outage is over for these messages a moment after the broker
                    # is back. The pass goes on to the next document, so one message the broker
                    # never takes cannot hold up the others; a few refusals in a row mean the
                    # broker is away, and the pass ends.
                    await collection.update_one(
                        {"_id": doc["_id"], OUTBOX_DUE: claimed_until},
                        {"$set": {OUTBOX_DUE: now_ms() + REFUSED_RETRY_MS}},
                    )
                    failures += 1
                    if failures >= REFUSALS_PER_PASS:
                        return relayed
                    continue
                failures = 0
                if not pending:
                    await collection.update_one(
                        {"_id": doc["_id"], OUTBOX: {}}, {"$unset": {OUTBOX_DUE: ""}}
                    )
                hook = self._after_flush.get(collection.name)
                if hook is not None:
                    await hook(doc)
                relayed += len(pending)
        return relayed

"""The transactional outbox without transactions.

A record and the messages that announce it are written in ONE document write: the messages sit in
the document's ``outbox`` array, with ``outbox_due_ms`` saying when a relay may take them over.
After the write the writer publishes them (confirmed) and clears them. If it dies in between, the
relay finds the document once ``outbox_due_ms`` has passed and publishes them again. So nothing is
published before it is durable, and nothing durable goes unpublished; consumers dedupe the rare
double publish on the message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

from aiohttp import web
from pymongo.asynchronous.collection import AsyncCollection

from darkroom_kit.clock import now_ms
from darkroom_kit.messaging import Envelope, Publisher

log = logging.getLogger(__name__)

OUTBOX = "outbox"
OUTBOX_DUE = "outbox_due_ms"

Collection = AsyncCollection[dict[str, Any]]
AfterFlush = Callable[[dict[str, Any]], Awaitable[None]]


def entries(exchange: str, envelopes: Sequence[Envelope]) -> list[dict[str, Any]]:
    return [{**e.model_dump(), "exchange": exchange} for e in envelopes]


def fields(exchange: str, envelopes: Sequence[Envelope], grace_ms: int) -> dict[str, Any]:
    """The fields a new document carries so that its messages are published exactly as it lands."""
    return {OUTBOX: entries(exchange, envelopes), OUTBOX_DUE: now_ms() + grace_ms}


def push(exchange: str, envelopes: Sequence[Envelope], grace_ms: int) -> dict[str, Any]:
    """Update operators that add messages to an existing document's outbox."""
    return {
        "$push": {OUTBOX: {"$each": entries(exchange, envelopes)}},
        "$set": {OUTBOX_DUE: now_ms() + grace_ms},
    }


def _envelope(entry: dict[str, Any]) -> tuple[str, Envelope]:
    return entry["exchange"], Envelope(
        id=entry["id"], type=entry["type"], time=entry["time"], data=entry["data"]
    )


class Outbox:
    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    async def flush(
        self, collection: Collection, doc_id: str, pending: Sequence[dict[str, Any]]
    ) -> bool:
        """Publish a document's pending messages and clear them. False when the broker refused:
        the messages stay in the document and the relay publishes them later."""
        if not pending:
            return True
        try:
            await asyncio.gather(
                *(self._publisher.publish(ex, env) for ex, env in map(_envelope, pending))
            )
        except Exception:
            log.warning(
                "outbox publish failed; left to the relay", extra={"doc_id": doc_id}, exc_info=True
            )
            return False
        await self._mark_sent(collection, doc_id, [p["id"] for p in pending])
        return True

    @staticmethod
    async def _mark_sent(collection: Collection, doc_id: str, ids: list[str]) -> None:
        # Clear the whole outbox only if nothing was added meanwhile; otherwise pull just ours and
        # leave the due time for the newcomers.
        cleared = await collection.update_one(
            {"_id": doc_id, OUTBOX: {"$size": len(ids)}, f"{OUTBOX}.id": {"$all": ids}},
            {"$set": {OUTBOX: []}, "$unset": {OUTBOX_DUE: ""}},
        )
        if cleared.matched_count == 0:
            await collection.update_one({"_id": doc_id}, {"$pull": {OUTBOX: {"id": {"$in": ids}}}})


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
            for _ in range(limit):
                now = now_ms()
                doc = await collection.find_one_and_update(
                    {OUTBOX_DUE: {"$lte": now}}, {"$set": {OUTBOX_DUE: now + self._lease_ms}}
                )
                if doc is None:
                    break
                pending = doc.get(OUTBOX) or []
                if pending and not await self._outbox.flush(collection, doc["_id"], pending):
                    return relayed
                if not pending:
                    await collection.update_one(
                        {"_id": doc["_id"], OUTBOX: {"$size": 0}}, {"$unset": {OUTBOX_DUE: ""}}
                    )
                hook = self._after_flush.get(collection.name)
                if hook is not None:
                    await hook(doc)
                relayed += len(pending)
        return relayed

    async def run_forever(self, interval_seconds: float) -> None:
        while True:
            try:
                relayed = await self.run_once()
                if relayed:
                    log.info("outbox relay republished %d message(s)", relayed)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay pass failed")
            await asyncio.sleep(interval_seconds)


def background_ctx(
    make: Callable[[web.Application], Coroutine[Any, Any, None]],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Run a long-lived coroutine for the app's lifetime; cancelled on shutdown."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(make(app))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return ctx

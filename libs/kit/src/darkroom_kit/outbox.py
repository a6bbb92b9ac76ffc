"""The transactional outbox without transactions, one per service.

A record and the messages that announce it are written in ONE document write: the messages sit in
the document's outbox of the service that wrote them (``outboxes.<service>``, a map by message
id), with ``outbox_due.<service>`` saying when that service's relay may take them over. After the
write the writer publishes them (confirmed) and clears them. If it dies in between, its own
service's relay finds the document once the due time has passed and publishes them again. So
nothing is published before it is durable, nothing durable goes unpublished, and each service
relays only what it wrote (several services may add messages to one document: a photo's
``photo.processed`` sits beside upload-ingest's messages, each relayed by its writer).
Consumers dedupe the rare double publish on the message id.

Entries written before outboxes had owners sit in ``outbox`` with the due time
``outbox_due_ms``; a relay made with ``adopt_unowned=True`` (upload-ingest's, the owner of the
collections they were written to) publishes those too.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, UpdateOne

from darkroom_kit.clock import now_ms
from darkroom_kit.messaging import Envelope, Publisher
from darkroom_kit.mongo import Collection
from darkroom_kit.tracing import carrier

log = logging.getLogger(__name__)

OUTBOXES = "outboxes"
OUTBOX_DUE_BY = "outbox_due"
# The layout from before outboxes had owners: read (and relayed) still, never written.
OUTBOX = "outbox"
OUTBOX_DUE = "outbox_due_ms"

# A document whose messages the broker refused is tried again after this long.
REFUSED_RETRY_MS = 2_000
# A relay that found nothing due waits longer each pass, up to this many intervals (16 s by
# default), and one the broker refused does not: what a writer flushed itself never waits for
# it, only what a crash left behind does, and polling an idle outbox was most of an idle
# service's CPU (the upload-ingest relay's six lookups every 2 s, about 2 of its 3.3 ms of CPU
# a second).
RELAY_IDLE_FACTOR = 8
# Refusals in a row after which a relay pass stops (the broker is away, not one message bad).
REFUSALS_PER_PASS = 3

AfterFlush = Callable[[dict[str, Any]], Awaitable[None]]

Pending = dict[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Lane:
    """Where one owner's messages wait in a document, and the field of their due time."""

    box: str
    due: str

    def pending_of(self, doc: dict[str, Any]) -> Pending:
        value: Any = doc
        for part in self.box.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, dict):
            return {}
        # The unowned layout's map may hold the owned maps' parent key on no server, but a
        # value that is not an entry is never published.
        return {k: v for k, v in value.items() if isinstance(v, dict) and "exchange" in v}


UNOWNED = Lane(OUTBOX, OUTBOX_DUE)


def lane(owner: str | None) -> Lane:
    """The lane of ``owner``'s messages; None: the unowned layout of older entries."""
    if owner is None:
        return UNOWNED
    # Field names of letters, digits and underscores only: the nx-27017 stand-in builds index
    # names from them and refuses any other character ("upload-ingest" -> "upload_ingest").
    key = re.sub(r"[^A-Za-z0-9_]", "_", owner)
    if not owner or key.startswith("_"):
        raise ValueError(f"not a usable outbox owner: {owner!r}")
    return Lane(f"{OUTBOXES}.{key}", f"{OUTBOX_DUE_BY}.{key}")


def entries(exchange: str, envelopes: Sequence[Envelope], owner: str | None = None) -> Pending:
    """Pending messages keyed by message id. A map, not an array: adding one is a ``$set`` of its
    own field and clearing one an ``$unset``, so concurrent writers never overwrite each other
    (and no server has to get ``$push`` of sub-documents right)."""
    extra: dict[str, Any] = {} if owner is None else {"owner": owner}
    # The trace of the write that made them: a message the relay publishes later still
    # belongs to the request that wrote it.
    trace_context = carrier()
    if trace_context:
        extra["trace"] = trace_context
    return {e.id: {**e.model_dump(), "exchange": exchange, **extra} for e in envelopes}


def fields(
    exchange: str, envelopes: Sequence[Envelope], grace_ms: int, owner: str | None = None
) -> dict[str, Any]:
    """The fields a new document carries so that its messages are published exactly as it lands."""
    pending = entries(exchange, envelopes, owner)
    due = now_ms() + grace_ms
    if owner is None:
        return {OUTBOX: pending, OUTBOX_DUE: due}
    key = lane(owner).box.removeprefix(f"{OUTBOXES}.")
    return {OUTBOXES: {key: pending}, OUTBOX_DUE_BY: {key: due}}


def push(
    exchange: str, envelopes: Sequence[Envelope], grace_ms: int, owner: str | None = None
) -> dict[str, Any]:
    """Update operators that add messages to an existing document's outbox of ``owner``."""
    where = lane(owner)
    added = {f"{where.box}.{mid}": e for mid, e in entries(exchange, envelopes, owner).items()}
    return {"$set": {**added, where.due: now_ms() + grace_ms}}


def pending_of(doc: dict[str, Any], owner: str | None = None) -> Pending:
    """``owner``'s messages waiting in ``doc`` (None: the unowned ones of older writers)."""
    return lane(owner).pending_of(doc)


# Keeps every outbox out of a read (a projection).
WITHOUT_OUTBOXES: dict[str, Any] = {OUTBOXES: 0, OUTBOX: 0}


def _envelope(entry: dict[str, Any]) -> tuple[str, Envelope, dict[str, str] | None]:
    trace_context = entry.get("trace")
    return (
        entry["exchange"],
        Envelope(id=entry["id"], type=entry["type"], time=entry["time"], data=entry["data"]),
        trace_context if isinstance(trace_context, dict) else None,
    )


class Outbox:
    """The outbox of one service (``owner``): what it writes is relayed by its own relay."""

    def __init__(self, publisher: Publisher, owner: str | None = None) -> None:
        self._publisher = publisher
        self.owner = owner
        self.lane = lane(owner)

    def fields(self, exchange: str, envelopes: Sequence[Envelope], grace_ms: int) -> dict[str, Any]:
        return fields(exchange, envelopes, grace_ms, self.owner)

    def push(self, exchange: str, envelopes: Sequence[Envelope], grace_ms: int) -> dict[str, Any]:
        return push(exchange, envelopes, grace_ms, self.owner)

    def entries(self, exchange: str, envelopes: Sequence[Envelope]) -> Pending:
        return entries(exchange, envelopes, self.owner)

    def pending_of(self, doc: dict[str, Any]) -> Pending:
        return self.lane.pending_of(doc)

    async def flush(self, collection: Collection, doc_id: str, pending: Pending) -> bool:
        """Publish a document's pending messages and clear them. False when the broker refused:
        the messages stay in the document and the relay publishes them later."""
        return await self.flush_many(collection, {doc_id: pending})

    async def flush_many(self, collection: Collection, pending: dict[str, Pending]) -> bool:
        """Publish the pending messages of many documents (every confirm in flight together) and
        clear them in one bulk write. False when the broker refused: see :meth:`flush`."""
        return await self._flush_many(collection, pending, self.lane)

    async def _flush_many(
        self, collection: Collection, pending: dict[str, Pending], where: Lane
    ) -> bool:
        pending = {doc_id: p for doc_id, p in pending.items() if p}
        if not pending:
            return True
        ordered = sorted(
            (e for p in pending.values() for e in p.values()), key=lambda e: (e["time"], e["id"])
        )
        try:
            await asyncio.gather(
                *(
                    self._publisher.publish(ex, env, trace_context=trace_context)
                    for ex, env, trace_context in map(_envelope, ordered)
                )
            )
        except Exception:
            log.warning(
                "outbox publish failed; left to the relay",
                extra={"doc_ids": list(pending)[:20], "owner": self.owner},
                exc_info=True,
            )
            return False
        await collection.bulk_write(
            [
                UpdateOne({"_id": doc_id}, {"$unset": {f"{where.box}.{mid}": "" for mid in p}})
                for doc_id, p in pending.items()
            ],
            ordered=False,
        )
        # The due time goes only once nothing else of this owner is pending (a writer may have
        # added more meanwhile).
        await collection.update_many(
            {"_id": {"$in": list(pending)}, where.box: {}}, {"$unset": {where.due: ""}}
        )
        return True


class OutboxRelay:
    """Republishes what its own service's writers left behind (and, with ``adopt_unowned``,
    the entries written before outboxes had owners). Safe with many replicas: each claims a
    document by moving its due time forward before publishing."""

    def __init__(
        self,
        outbox: Outbox,
        collections: Sequence[Collection],
        *,
        lease_ms: int = 30_000,
        after_flush: dict[str, AfterFlush] | None = None,
        adopt_unowned: bool = False,
        exchanges: frozenset[str] | None = None,
    ) -> None:
        self._outbox = outbox
        # Entries naming another namespace's exchanges (another deployment on the same
        # database) are not this relay's: a publish to an exchange missing here would close the
        # channel under every publish in flight on it.
        self._exchanges = exchanges
        self._collections = collections
        self._lease_ms = lease_ms
        self._after_flush = after_flush or {}
        self._lanes = [outbox.lane]
        if adopt_unowned and outbox.lane != UNOWNED:
            self._lanes.append(UNOWNED)

    async def ensure_indexes(self) -> None:
        """An index on each due time it looks for (sparse: only documents with messages
        waiting have one), so a pass costs a lookup, not a scan of the collection."""
        for collection in self._collections:
            for where in self._lanes:
                await collection.create_index([(where.due, ASCENDING)], sparse=True)

    async def run_once(self, limit: int = 500) -> int:
        """The messages this pass republished, plus the documents the broker refused (due
        again shortly): 0 only when nothing was due, the one case a relay may wait longer."""
        moved = 0
        for collection in self._collections:
            for where in self._lanes:
                done, relayed, refused = await self._relay(collection, where, limit)
                moved += relayed + refused
                if not done:
                    return moved
        return moved

    async def _relay(
        self, collection: Collection, where: Lane, limit: int
    ) -> tuple[bool, int, int]:
        """Relays one lane of one collection: (False, ...) when the broker seems away, the
        messages relayed, the documents refused."""
        relayed = 0
        failures = 0
        refused = 0
        for _ in range(limit):
            now = now_ms()
            claimed_until = now + self._lease_ms
            doc = await collection.find_one_and_update(
                {where.due: {"$lte": now}}, {"$set": {where.due: claimed_until}}
            )
            if doc is None:
                break
            pending = where.pending_of(doc)
            if self._exchanges is not None:
                own = {k: e for k, e in pending.items() if e["exchange"] in self._exchanges}
                if pending and not own:
                    # Another deployment's messages only: nothing of this relay's to do, nor
                    # its after-flush hook to run (the document is due again once the claim
                    # ends, for the relay it belongs to).
                    continue
                pending = own
            if pending and not await self._outbox._flush_many(
                collection, {doc["_id"]: pending}, where
            ):
                # Refused: due again after a short wait, not after the whole claim (30 s), so
                # a broker outage is over for these messages a moment after the broker is
                # back. The pass goes on to the next document, so one message the broker never
                # takes cannot hold up the others; a few refusals in a row mean the broker is
                # away, and the pass ends.
                await collection.update_one(
                    {"_id": doc["_id"], where.due: claimed_until},
                    {"$set": {where.due: now_ms() + REFUSED_RETRY_MS}},
                )
                failures += 1
                refused += 1
                if failures >= REFUSALS_PER_PASS:
                    return False, relayed, refused
                continue
            failures = 0
            if not pending:
                await collection.update_one(
                    {"_id": doc["_id"], where.box: {}}, {"$unset": {where.due: ""}}
                )
            hook = self._after_flush.get(collection.name)
            if hook is not None:
                await hook(doc)
            relayed += len(pending)
        return True, relayed, refused

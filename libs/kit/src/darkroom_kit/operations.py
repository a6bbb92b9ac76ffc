"""The Operation lifecycle, in one place: ``queued`` when created (with the command that starts
it, in the same write: the outbox), ``running`` once a worker claims it (with progress along the
way), then ``done`` with a result or ``failed`` with a reason. An API answers with it at once or
waits (``?wait=N``) for it to end.

upload-ingest creates and reads Operations; the worker of each kind (metadata-repair,
webhook-dispatch) claims, reports and ends them. Every write goes through :class:`Operations`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from pymongo import ReturnDocument

from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.ids import new_id
from darkroom_kit.lease import HOLDER, RELEASED, UNTIL, Lease
from darkroom_kit.messaging import Envelope
from darkroom_kit.metrics import OperationMetrics
from darkroom_kit.mongo import Database, Document
from darkroom_kit.outbox import WITHOUT_OUTBOXES, Outbox
from darkroom_kit.statuses import OperationState
from darkroom_kit.stored.operations import OperationRecord

# The states an Operation can still leave ($in, not $nin: the nx-27017 stand-in's operator set).
OPEN = [OperationState.QUEUED, OperationState.RUNNING]
# Where a long result is cut (a failure's reason; a list of failed items).
REASON_CHARS = 500
# A key that at most one open Operation holds (a unique, sparse index, made by the creator's
# service): taken in the write that creates it, given up in the write that ends it.
EXCLUSIVE = "exclusive"
# What a kind keeps for the services beside its result, too big to come with every read of the
# Operation (an archive's photo ids): written by :meth:`Operations.finish`, read on its own.
INTERNAL = "internal"
# How an Operation is read: without its outbox or its internal records.
OPERATION_FIELDS: Document = {**WITHOUT_OUTBOXES, INTERNAL: 0}


def new_operation_id() -> str:
    return new_id("op")


class Operations:
    def __init__(self, db: Database, metrics: OperationMetrics | None = None) -> None:
        """``metrics``: the app's, counting each Operation that ends here (a service that ends
        Operations passes its own; one that only creates and reads them need not)."""
        self._col = db[records.OPERATIONS]
        self._metrics = metrics

    # ---- the API's side -------------------------------------------------------------------------

    async def create(
        self,
        operation_id: str,
        kind: str,
        command: Envelope | None,
        *,
        exchange: str = "",
        outbox: Outbox | None = None,
        grace_ms: int = 0,
        params: Mapping[str, Any],
        progress: Mapping[str, int],
        exclusive: str | None = None,
    ) -> OperationRecord:
        """A queued Operation and the command that starts it, stored in one write and then
        published (if the publish fails, the writer's outbox relay publishes it).

        With ``exclusive``, while another open Operation holds that key nothing is stored and
        pymongo's DuplicateKeyError is raised: two requests at once cannot both start one.

        Without a command, the Operation is carried out by the service that created it, which
        claims it with a lease (:meth:`claim`): it is stored with a lease that is free."""
        record = OperationRecord(
            id=operation_id,
            kind=kind,
            state=OperationState.QUEUED,
            created_ms=now_ms(),
            params=dict(params),
            progress=dict(progress),
        )
        held: Document = {} if exclusive is None else {EXCLUSIVE: exclusive}
        if command is None:
            await self._col.insert_one({**record.document(), UNTIL: 0, **held})
            return record
        if outbox is None:
            raise ValueError("a command is published through the writer's outbox")
        # With a free lease too: a worker that carries it out may hold it by one (archives).
        doc: Document = {
            **record.document(),
            UNTIL: 0,
            **held,
            **outbox.fields(exchange, [command], grace_ms),
        }
        await self._col.insert_one(doc)
        await outbox.flush(self._col, operation_id, outbox.pending_of(doc))
        return record

    async def request_stop(self, operation_id: str) -> OperationRecord | None:
        """Ask an open Operation to stop; its worker ends it at its next step. None when it is
        unknown or has ended already."""
        doc = await self._col.find_one_and_update(
            {"_id": operation_id, "state": {"$in": OPEN}},
            {"$set": {"stop_requested_ms": now_ms()}},
            OPERATION_FIELDS,
            return_document=ReturnDocument.AFTER,
        )
        return None if doc is None else OperationRecord.from_document(doc)

    async def get(self, operation_id: str) -> OperationRecord | None:
        doc = await self._col.find_one({"_id": operation_id}, OPERATION_FIELDS)
        return None if doc is None else OperationRecord.from_document(doc)

    async def wait(
        self, operation_id: str, seconds: float, *, interval: float = 0.2
    ) -> OperationRecord | None:
        """The Operation once it has ended, or as it stands after ``seconds`` (0: at once);
        None if there is no such Operation."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            op = await self.get(operation_id)
            if op is None or op.final or loop.time() >= deadline:
                return op
            await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))

    # ---- the worker's side ----------------------------------------------------------------------

    def lease(self, operation_id: str, lease_ms: int) -> Lease:
        return Lease(self._col, operation_id, lease_ms)

    async def claimable(
        self, kinds: list[str], now: int, limit: int, creator_grace_ms: int = 0
    ) -> list[str]:
        """Open Operations of ``kinds`` (carried out by their creator, see :meth:`create`)
        whose lease is free: never claimed, or their holder died. One created less than
        ``creator_grace_ms`` ago is left to its creator, which claims it right after creating
        it: another replica would otherwise take it in between."""
        cursor = self._col.find(
            {
                "$and": [
                    {"kind": {"$in": kinds}, "state": {"$in": OPEN}},
                    {"created_ms": {"$lt": now - creator_grace_ms}},
                    Lease.free(now),
                ]
            },
            {"_id": 1},
        ).limit(limit)
        return [str(doc["_id"]) async for doc in cursor]

    async def claim(self, lease: Lease, now: int) -> OperationRecord | None:
        """Take the Operation of ``lease`` (``running``, held by it) if it is open and its lease
        is free; None if another holder has it or it has ended."""
        doc = await self._col.find_one_and_update(
            {
                "$and": [
                    {"_id": lease.doc_id, "state": {"$in": OPEN}},
                    Lease.free(now),
                ]
            },
            {"$set": {"state": OperationState.RUNNING, "updated_ms": now, **lease.fields(now)}},
            OPERATION_FIELDS,
            return_document=ReturnDocument.AFTER,
        )
        return None if doc is None else OperationRecord.from_document(doc)

    async def release(self, lease: Lease) -> None:
        """Give up a lease on an Operation that is still open (a graceful stop): another
        process may take it over at once rather than after the lease runs out. Its idle time
        (:meth:`fail_abandoned`) counts from here: its retry may be a long delay away."""
        await self._col.update_one(lease.mine(), {"$set": {UNTIL: 0, "updated_ms": now_ms()}})

    async def start(
        self, operation_id: str, progress: Mapping[str, int] | None = None
    ) -> OperationRecord | None:
        """Claim it for work (``running``; again after a restart). None when it is unknown or
        has ended already: a duplicate command, nothing to do."""
        fields: Document = {"state": OperationState.RUNNING, "updated_ms": now_ms()}
        if progress is not None:
            fields["progress"] = dict(progress)
        doc = await self._col.find_one_and_update(
            {"_id": operation_id, "state": {"$in": OPEN}},
            {"$set": fields},
            OPERATION_FIELDS,
            return_document=ReturnDocument.AFTER,
        )
        return None if doc is None else OperationRecord.from_document(doc)

    async def report(
        self,
        operation_id: str,
        progress: Mapping[str, int],
        *,
        failures: Mapping[str, str] | None = None,
        cursor: str | None = None,
        details: Mapping[str, Any] | None = None,
        lease: Lease | None = None,
    ) -> bool:
        """Progress so far; ``failures`` adds failed items (by id), ``cursor`` says where a
        batched worker got to, ``details`` sets entries of the kind's own ``details``. All
        survive a restart (see :meth:`start`'s record). With ``lease``: only while it holds
        it. Whether it was written (False: it ended, or another holder has it)."""
        fields: Document = {"progress": dict(progress), "updated_ms": now_ms()}
        for item, reason in (failures or {}).items():
            fields[f"failures.{item}"] = reason
        if cursor is not None:
            fields["cursor"] = cursor
        for name, value in (details or {}).items():
            fields[f"details.{name}"] = value
        query: Document = {"_id": operation_id, "state": OperationState.RUNNING}
        if lease is not None:
            query[HOLDER] = lease.holder
        result = await self._col.update_one(query, {"$set": fields})
        return result.matched_count > 0

    async def finish(
        self,
        operation_id: str,
        result: Mapping[str, Any],
        progress: Mapping[str, int] | None = None,
        *,
        lease: Lease | None = None,
        internal: Mapping[str, Any] | None = None,
    ) -> None:
        """``done`` with its result (and its last progress, and its :data:`INTERNAL` records)."""
        fields: Document = {
            "state": OperationState.DONE,
            "updated_ms": now_ms(),
            "result": dict(result),
        }
        if progress is not None:
            fields["progress"] = dict(progress)
        if internal is not None:
            fields[INTERNAL] = dict(internal)
        await self._end(operation_id, fields, lease)

    async def fail(
        self,
        operation_id: str,
        reason: str,
        result: Mapping[str, Any] | None = None,
        *,
        lease: Lease | None = None,
    ) -> None:
        """``failed``, never left ``running``: ``result`` is what it did, plus the reason
        (``error``)."""
        fields: Document = {
            "state": OperationState.FAILED,
            "updated_ms": now_ms(),
            "result": {**(result or {}), "error": reason[:REASON_CHARS]},
        }
        await self._end(operation_id, fields, lease)

    async def fail_abandoned(
        self,
        kind: str,
        idle_ms: int,
        reason: str,
        *,
        state: OperationState = OperationState.RUNNING,
        limit: int = 100,
    ) -> list[str]:
        """Fail the Operations of ``kind`` in ``state`` whose lease is free and that nobody has
        claimed or moved for ``idle_ms``: running ones idle for longer than the worker's longest
        retry delay, or queued ones never started for longer than any queue wait, had their
        command dead-lettered, so nothing would ever end them, and one that holds an
        ``exclusive`` key would block its like for good. The ids of those it failed."""
        now = now_ms()
        since = "updated_ms" if state is OperationState.RUNNING else "created_ms"
        idle: Document = {"kind": kind, "state": state, since: {"$lt": now - idle_ms}}
        found = self._col.find({"$and": [idle, Lease.free(now)]}, {"_id": 1}).limit(limit)
        failed: list[str] = []
        for op_id in [str(doc["_id"]) async for doc in found]:
            fields: Document = {
                "state": OperationState.FAILED,
                "updated_ms": now_ms(),
                "result": {"error": reason[:REASON_CHARS]},
            }
            # Still idle and free at the write: a worker that claimed it meanwhile keeps it.
            still = {"$and": [{**idle, "_id": op_id}, Lease.free(now_ms())]}
            if await self._end(op_id, fields, still=still):
                failed.append(op_id)
        return failed

    async def _end(
        self,
        operation_id: str,
        fields: Document,
        lease: Lease | None = None,
        *,
        still: Document | None = None,
    ) -> bool:
        # Only once: an Operation that has ended stays as it ended. A leased one ends only by
        # its holder, and holds no lease after.
        query: Document = {"_id": operation_id, "state": {"$in": OPEN}}
        update: Document = {"$set": fields, "$unset": {EXCLUSIVE: ""}}
        if lease is not None:
            query[HOLDER] = lease.holder
        if lease is not None or still is not None:
            update["$unset"] |= RELEASED
        if still is not None:
            query = {"$and": [query, still]}
        # Its kind comes back with the write: counted only by the call that ended it.
        ended = await self._col.find_one_and_update(query, update, {"kind": 1})
        if ended is not None and self._metrics is not None:
            self._metrics.ended(str(ended.get("kind")), str(fields["state"]))
        return ended is not None

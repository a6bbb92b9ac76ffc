"""Recovery: send every failed delivery of an endpoint in a time range again, as an Operation
with progress (``POST /v1/webhooks/{id}/recover`` creates it, this consumer carries it out)."""

from __future__ import annotations

import logging

from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.messaging import Envelope, Publisher, Topology
from darkroom_kit.mongo import Database, Document

log = logging.getLogger(__name__)

BATCH = 200


class Recoverer:
    def __init__(
        self, db: Database, publisher: Publisher, topology: Topology, *, retries: int
    ) -> None:
        self._operations = db[records.OPERATIONS]
        self._deliveries = db[records.WEBHOOK_DELIVERIES]
        self._publisher = publisher
        self._topology = topology
        self._retries = retries

    async def handle(self, envelope: Envelope, attempt: int) -> None:
        op_id = envelope.data["operation_id"]
        op = await self._operations.find_one({"_id": op_id})
        if op is None or op["state"] in ("done", "failed"):
            return  # unknown, or a duplicate of a finished command
        try:
            await self._run(op)
        except Exception as exc:
            if attempt > self._retries:
                # The last attempt ends the operation in a clear failed state, never running.
                await self._operations.update_one(
                    {"_id": op_id},
                    {
                        "$set": {
                            "state": "failed",
                            "updated_ms": now_ms(),
                            "result": {**op.get("progress", {}), "error": str(exc)[:500]},
                        }
                    },
                )
            raise

    def _query(self, op: Document) -> Document:
        params = op["params"]
        created: Document = {"$gte": params["since_ms"], "$lt": params["until_ms"]}
        return {"endpoint_id": params["endpoint_id"], "created_ms": created}

    async def _run(self, op: Document) -> None:
        op_id = op["_id"]
        base = self._query(op)
        progress = dict(op.get("progress") or {})
        if "total" not in progress:
            total = await self._deliveries.count_documents({**base, "status": "failed"})
            progress = {"total": total, "resent": 0}
        await self._operations.update_one(
            {"_id": op_id},
            {"$set": {"state": "running", "progress": progress, "updated_ms": now_ms()}},
        )
        cursor = op.get("cursor")
        while True:
            # Failed ones, and those this operation reopened before a crash but may not have
            # sent yet (sent again: receivers dedupe on the unchanged webhook-id).
            query: Document = {
                **base,
                "$or": [{"status": "failed"}, {"status": "pending", "recovered_by": op_id}],
            }
            if cursor is not None:
                query["_id"] = {"$gt": cursor}
            batch = [
                d
                async for d in self._deliveries.find(query, {"_id": 1, "endpoint_id": 1})
                .sort("_id", 1)
                .limit(BATCH)
            ]
            if not batch:
                break
            ids = [d["_id"] for d in batch]
            await self._deliveries.update_many(
                {"_id": {"$in": ids}, "status": "failed"},
                {"$set": {"status": "pending", "lease_until_ms": 0, "recovered_by": op_id}},
            )
            await self._publisher.publish_many(
                self._topology.commands,
                [
                    Envelope.new(
                        records.WEBHOOK_ATTEMPT, records.attempt_data(d["_id"], d["endpoint_id"])
                    )
                    for d in batch
                ],
            )
            cursor = ids[-1]
            progress["resent"] += len(ids)
            await self._operations.update_one(
                {"_id": op_id},
                {"$set": {"progress": progress, "cursor": cursor, "updated_ms": now_ms()}},
            )
        await self._operations.update_one(
            {"_id": op_id},
            {"$set": {"state": "done", "result": progress, "updated_ms": now_ms()}},
        )
        log.info("recovery done", extra={"operation_id": op_id, **progress})

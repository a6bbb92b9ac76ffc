"""Recovery: send every failed delivery of an endpoint in a time range again, as an Operation
with progress (``POST /v1/webhooks/{id}/recover`` creates it, this consumer carries it out)."""

from __future__ import annotations

import logging

from darkroom_kit import records
from darkroom_kit.messaging import Envelope, Message
from darkroom_kit.mongo import Document
from darkroom_kit.operations import Operations
from darkroom_kit.payloads import WebhookRecover
from darkroom_kit.statuses import DeliveryStatus
from darkroom_kit.stored import Record
from darkroom_kit.stored.operations import OperationRecord, RecoverParams

from darkroom_webhooks.deps import Deps

log = logging.getLogger(__name__)

BATCH = 200


class Recoverer:
    def __init__(self, deps: Deps) -> None:
        self._operations = Operations(deps.db, metrics=deps.operation_metrics)
        self._deliveries = deps.db[records.WEBHOOK_DELIVERIES]
        self._publisher = deps.publisher
        self._topology = deps.topology
        # The attempt after the last retry fails the operation.
        self._retries = len(deps.settings.recover_retry_delays_ms)

    async def handle(self, message: Message[WebhookRecover]) -> None:
        op_id = message.payload.operation_id
        op = await self._operations.start(op_id)
        if op is None:
            return  # unknown, or a duplicate of a finished command
        try:
            await self._run(op)
        except Exception as exc:
            if message.attempt > self._retries:
                # The last attempt ends the operation in a clear failed state, never running.
                current = await self._operations.get(op_id)
                done = current.progress if current is not None else op.progress
                await self._operations.fail(op_id, str(exc), dict(done))
            raise

    async def _run(self, op: OperationRecord) -> None:
        op_id = op.id
        params = RecoverParams.model_validate(op.params)
        created: Document = {"$gte": params.since_ms, "$lt": params.until_ms}
        base: Document = {"endpoint_id": params.endpoint_id, "created_ms": created}
        progress = dict(op.progress)
        if "total" not in progress:
            total = await self._deliveries.count_documents(
                {**base, "status": DeliveryStatus.FAILED}
            )
            progress = {"total": total, "resent": 0}
            await self._operations.report(op_id, progress)
        cursor = op.cursor
        while True:
            # Failed ones, and those this operation reopened before a crash but may not have
            # sent yet (sent again: receivers dedupe on the unchanged webhook-id).
            query: Document = {
                **base,
                "$or": [
                    {"status": DeliveryStatus.FAILED},
                    {"status": DeliveryStatus.PENDING, "recovered_by": op_id},
                ],
            }
            if cursor is not None:
                query["_id"] = {"$gt": cursor}
            ids = [
                Record.of(d).id
                async for d in self._deliveries.find(query, {"_id": 1}).sort("_id", 1).limit(BATCH)
            ]
            if not ids:
                break
            await self._deliveries.update_many(
                {"_id": {"$in": ids}, "status": DeliveryStatus.FAILED},
                {
                    "$set": {
                        "status": DeliveryStatus.PENDING,
                        "lease_until_ms": 0,
                        "recovered_by": op_id,
                    }
                },
            )
            await self._publisher.publish_many(
                self._topology.commands,
                [
                    Envelope.new(
                        records.WEBHOOK_ATTEMPT, records.attempt_data(did, params.endpoint_id)
                    )
                    for did in ids
                ],
            )
            cursor = ids[-1]
            progress["resent"] += len(ids)
            await self._operations.report(op_id, progress, cursor=cursor)
        await self._operations.finish(op_id, progress, progress)
        log.info("recovery done", extra={"operation_id": op_id, **progress})

"""Re-extract missing width/height (and optionally capture date) from the head of stored files."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial

from darkroom_kit import outbox, records
from darkroom_kit.clock import now_ms
from darkroom_kit.imaging import HeaderFacts, ImageRefused, read_header
from darkroom_kit.messaging import Envelope, Retry, Topology
from darkroom_kit.mongo import Database, Document
from darkroom_kit.outbox import Outbox
from darkroom_kit.storage import ObjectNotFound, S3ObjectStore, StorageUnavailable
from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)

GRACE_MS = 10_000


def header_facts(data: bytes, max_pixels: int) -> HeaderFacts:
    return read_header(data, max_pixels)[1]


@dataclass
class RepairResult:
    scanned: int = 0
    repaired: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {"scanned": self.scanned, "repaired": self.repaired, "failed": len(self.failed)}


class Repairer:
    def __init__(
        self,
        db: Database,
        store: S3ObjectStore,
        pool: Executor,
        outbox_: Outbox,
        topology: Topology,
        base_url: str,
        head_bytes: int,
        max_pixels: int,
        batch_size: int,
        concurrency: int,
        registry: CollectorRegistry,
        retries: int = 3,
    ) -> None:
        self._photos = db[records.PHOTOS]
        self._operations = db[records.OPERATIONS]
        self._retries = retries
        self._store = store
        self._pool = pool
        self._outbox = outbox_
        self._topology = topology
        self._base_url = base_url
        self._head_bytes = head_bytes
        self._max_pixels = max_pixels
        self._batch_size = batch_size
        self._limit = asyncio.Semaphore(concurrency)
        self._repaired = Counter(
            "photos_repaired_total", "Photos repaired, by outcome", ["outcome"], registry=registry
        )

    async def handle(self, envelope: Envelope, attempt: int) -> None:
        op_id = envelope.data.get("operation_id")
        if op_id is not None:
            op = await self._operations.find_one({"_id": op_id}, {"state": 1})
            if op is None or op["state"] in ("done", "failed"):
                return  # a duplicate of finished work
            await self._operations.update_one(
                {"_id": op_id}, {"$set": {"state": "running", "updated_ms": now_ms()}}
            )

        async def progress(result: RepairResult) -> None:
            if op_id is not None:
                await self._operations.update_one(
                    {"_id": op_id}, {"$set": {"progress": result.counts(), "updated_ms": now_ms()}}
                )

        try:
            result = await self.run(
                envelope.data.get("event_id"),
                bool(envelope.data.get("include_capture_date", False)),
                progress,
            )
        except Exception as exc:
            # The last attempt ends the operation in a clear failed state; it is never left
            # "running". Earlier attempts are retried (a restart re-runs the scan, which skips
            # what is already repaired).
            if op_id is not None and attempt > self._retries:
                await self._operations.update_one(
                    {"_id": op_id},
                    {
                        "$set": {
                            "state": "failed",
                            "updated_ms": now_ms(),
                            "result": {"error": f"{type(exc).__name__}: {exc}"[:500]},
                        }
                    },
                )
            raise
        if op_id is not None:
            await self._operations.update_one(
                {"_id": op_id},
                {
                    "$set": {
                        "state": "done",
                        "updated_ms": now_ms(),
                        "progress": result.counts(),
                        "result": {
                            **result.counts(),
                            "failed_photos": [
                                {"id": k, "reason": v}
                                for k, v in list(result.failed.items())[:1000]
                            ],
                        },
                    }
                },
            )
        log.info("repair finished", extra={"message_id": envelope.id, **result.counts()})

    async def run(
        self,
        event_id: str | None,
        include_capture_date: bool,
        progress: Callable[[RepairResult], Awaitable[None]] | None = None,
    ) -> RepairResult:
        # {"$eq": None} rather than a bare None: the same on MongoDB (null or missing), and the
        # nx-27017 stand-in matches nothing for a bare None inside $or.
        missing: list[Document] = [{"width": {"$eq": None}}, {"height": {"$eq": None}}]
        if include_capture_date:
            missing.append({"captured_at_ms": {"$eq": None}})
        # "uploaded" photos are still with thumbnailing, which records the same fields.
        query: Document = {
            "kind": "image",
            "status": {"$in": ["processed", "failed"]},
            "$or": missing,
        }
        if event_id:
            query["event_id"] = event_id
        result = RepairResult()
        seen: set[str] = set()
        while True:
            batch = [
                d
                async for d in self._photos.find(
                    {**query, "_id": {"$nin": list(seen)}} if seen else query,
                    {
                        "original_key": 1,
                        "event_id": 1,
                        "captured_at_ms": 1,
                        "width": 1,
                        "height": 1,
                    },
                ).limit(self._batch_size)
            ]
            if not batch:
                return result
            seen.update(d["_id"] for d in batch)
            result.scanned += len(batch)
            outcomes = await asyncio.gather(
                *(self._repair_one(d, include_capture_date) for d in batch)
            )
            for doc, outcome in zip(batch, outcomes, strict=True):
                if outcome is None:
                    result.repaired += 1
                else:
                    result.failed[doc["_id"]] = outcome
            if progress is not None:
                await progress(result)

    async def _repair_one(self, doc: Document, include_capture_date: bool) -> str | None:
        async with self._limit:
            try:
                facts = await self._facts(doc["original_key"])
            except ObjectNotFound:
                self._repaired.labels("missing").inc()
                return "original_missing"
            except ImageRefused as exc:
                self._repaired.labels("refused").inc()
                return exc.code
            except StorageUnavailable as exc:
                raise Retry(f"storage: {exc}") from exc
        fields: Document = {"width": facts.width, "height": facts.height}
        if include_capture_date and doc.get("captured_at_ms") is None:
            fields["captured_at_ms"] = facts.captured_at_ms
        full = await self._photos.find_one({"_id": doc["_id"]}, {outbox.OUTBOX: 0})
        if full is None:
            return "deleted"
        message = Envelope.new(
            records.PHOTO_REPAIRED,
            {
                "photo": records.photo_public({**full, **fields}, self._base_url),
                "repaired_fields": sorted(fields),
            },
        )
        ops = outbox.push(self._topology.events, [message], GRACE_MS)
        ops["$set"].update(fields)
        updated = await self._photos.find_one_and_update(
            {"_id": doc["_id"], "status": {"$ne": "deleting"}}, ops
        )
        if updated is None:
            return "deleted"
        await self._outbox.flush(
            self._photos, doc["_id"], outbox.entries(self._topology.events, [message])
        )
        self._repaired.labels("repaired").inc()
        return None

    async def _facts(self, key: str) -> HeaderFacts:
        loop = asyncio.get_running_loop()
        head = await self._store.get_bytes(key, 0, self._head_bytes - 1)
        try:
            return await loop.run_in_executor(
                self._pool, partial(header_facts, head, self._max_pixels)
            )
        except ImageRefused:
            if len(head) < self._head_bytes:
                raise  # that was the whole file
        # The header lies beyond the head (a JPEG with big metadata first): read it all.
        whole = await self._store.get_bytes(key)
        return await loop.run_in_executor(
            self._pool, partial(header_facts, whole, self._max_pixels)
        )

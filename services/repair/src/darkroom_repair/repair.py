"""Re-extract missing width/height (and optionally capture date) from the head of stored files.

A repair scans in batches. Each batch is claimed first (a lease on its photos), so two repairs at
once split the work instead of doing it twice. The facts are read concurrently (images: a ranged
GET of the head, parsed in the process pool; videos: ffmpeg reading over a presigned URL), then
written back in one bulk write together with their ``photo.repaired`` messages (the outbox), which
are published with their confirms in flight together.

A repair is owned by its operation id (a sweep by its message id). When the service dies mid-scan
the message comes back and the owner takes its own claims again and carries on; its counts stay
exact because every photo it repaired records the owner, and its failures are on the operation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from darkroom_kit import outbox, records
from darkroom_kit.clock import now_ms
from darkroom_kit.imaging import HeaderFacts, ImageRefused, read_header
from darkroom_kit.messaging import Envelope, Message, Retry
from darkroom_kit.mongo import Document
from darkroom_kit.operations import Operations
from darkroom_kit.outbox import WITHOUT_OUTBOXES
from darkroom_kit.payloads import RepairRequested
from darkroom_kit.pool import JobTimedOut, PoolRestarted
from darkroom_kit.statuses import PhotoKind, PhotoStatus
from darkroom_kit.storage import ObjectNotFound, StorageUnavailable
from darkroom_kit.stored import Record
from darkroom_kit.stored.photos import PhotoRecord
from darkroom_kit.video import probe_video
from prometheus_client import Counter
from pymongo import UpdateOne

from darkroom_repair.deps import Deps

log = logging.getLogger(__name__)

# How long a repair's claim on a batch holds if the repair dies without coming back.
CLAIM_MS = 120_000
# Header parsing takes a millisecond or two; anything near this is a hostile file.
PARSE_TIME_LIMIT = 20.0
# ffmpeg reading a video's header over a presigned URL gives up after this.
VIDEO_TIME_LIMIT = 60.0

OnBatch = Callable[["RepairResult", dict[str, str]], Awaitable[None]]


def header_facts(data: bytes, max_pixels: int) -> HeaderFacts:
    return read_header(data, max_pixels)[1]


def header_facts_many(heads: list[bytes], max_pixels: int) -> list[HeaderFacts | ImageRefused]:
    """Many heads in one job: a header parse takes a quarter of a millisecond, a trip through the
    process pool several times that, so the trip is shared."""
    out: list[HeaderFacts | ImageRefused] = []
    for head in heads:
        try:
            out.append(read_header(head, max_pixels)[1])
        except ImageRefused as exc:
            out.append(exc)
    return out


def exif_at_the_end(head: bytes) -> bool:
    """A WebP whose VP8X header announces EXIF: the EXIF chunk (and the orientation in it) comes
    after the image data, at the end of the file."""
    return (
        head[:4] == b"RIFF"
        and head[8:16] == b"WEBPVP8X"
        and len(head) > 20
        and bool(head[20] & 0x08)
    )


def missing_fields(doc: PhotoRecord, include_capture_date: bool) -> bool:
    """What the scan's query selects, for one photo in hand."""
    if doc.width is None or doc.height is None:
        return True
    return include_capture_date and doc.captured_at_ms is None and not doc.capture_date_absent


# The record's fields as a photo's public view names them (photo.repaired's repaired_fields).
PUBLIC_NAMES = {"captured_at_ms": "captured_at"}


@dataclass(frozen=True, slots=True)
class Found:
    width: int
    height: int
    captured_at_ms: int | None
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """What one written batch adds to a repair's counts."""

    scanned: int
    repaired: int
    failures: dict[str, str]


@dataclass
class RepairResult:
    scanned: int = 0
    repaired: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {"scanned": self.scanned, "repaired": self.repaired, "failed": len(self.failed)}


class Repairer:
    def __init__(self, deps: Deps) -> None:
        settings = deps.settings
        self._photos = deps.db[records.PHOTOS]
        self._operations = Operations(deps.db, deps.operation_metrics)
        self._grace_ms = settings.outbox_grace_ms
        # The attempt after the last retry fails the operation.
        self._retries = len(settings.repair_retry_delays_ms)
        self._store = deps.store
        self._pool = deps.pool
        self._outbox = deps.outbox
        self._topology = deps.topology
        self._base_url = settings.public_base_url
        self._head_bytes = settings.head_bytes
        self._max_pixels = settings.max_pixels
        self._batch_size = settings.batch_size
        self._limit = asyncio.Semaphore(settings.concurrency)
        self._repaired = Counter(
            "photos_repaired_total",
            "Photos repaired, by outcome",
            ["outcome"],
            registry=deps.registry,
        )

    async def handle(self, message: Message[RepairRequested]) -> None:
        request, envelope = message.payload, message.envelope
        op_id = request.operation_id
        owner = op_id or envelope.id
        failures: dict[str, str] = {}
        if op_id is not None:
            op = await self._operations.start(op_id)
            if op is None:
                return  # unknown, or a duplicate of finished work
            failures = dict(op.failures)  # from before a restart

        async def on_batch(result: RepairResult, new_failures: dict[str, str]) -> None:
            if op_id is not None:
                await self._operations.report(op_id, result.counts(), failures=new_failures)

        try:
            result = await self.run(
                request.event_id,
                request.include_capture_date,
                owner=owner,
                on_batch=on_batch,
                failed_before=failures,
            )
        except Exception as exc:
            # The last attempt ends the operation in a clear failed state; it is never left
            # "running". Earlier attempts are retried (and carry on where this one stopped).
            if op_id is not None and message.attempt > self._retries:
                await self._operations.fail(op_id, f"{type(exc).__name__}: {exc}")
            raise
        if op_id is not None:
            await self._operations.finish(
                op_id,
                {
                    **result.counts(),
                    "failed_photos": [
                        {"id": k, "reason": v} for k, v in list(result.failed.items())[:1000]
                    ],
                },
                result.counts(),
            )
        log.info("repair finished", extra={"message_id": envelope.id, **result.counts()})

    async def run(
        self,
        event_id: str | None,
        include_capture_date: bool,
        *,
        owner: str,
        on_batch: OnBatch | None = None,
        failed_before: dict[str, str] | None = None,
    ) -> RepairResult:
        # {"$eq": None} rather than a bare None: the same on MongoDB (null or missing), and the
        # nx-27017 stand-in matches nothing for a bare None inside $or.
        missing: list[Document] = [{"width": {"$eq": None}}, {"height": {"$eq": None}}]
        if include_capture_date:
            # A file found without a date is not read again for one, run after run.
            missing.append({"captured_at_ms": {"$eq": None}, "capture_date_absent": {"$ne": True}})
        # "uploaded" photos are still with thumbnailing, which records the same fields.
        query: Document = {
            "kind": {"$in": [PhotoKind.IMAGE, PhotoKind.VIDEO]},
            "status": {"$in": [PhotoStatus.PROCESSED, PhotoStatus.FAILED]},
            "$or": missing,
        }
        if event_id:
            query["event_id"] = event_id
        result = RepairResult(failed=dict(failed_before or {}))
        # What an earlier run of the same repair did before the service restarted.
        result.repaired = await self._photos.count_documents({"repaired_by": owner})
        result.scanned = result.repaired + len(result.failed)
        known_failures = set(result.failed)
        # The scan walks the photos in id order (a cursor on _id, not a growing $nin list) and
        # runs one batch ahead: while a batch's heads are read, the next one is found and
        # claimed, and the one before is written. Each stage waits on a different server.

        async def find_and_claim(after: str) -> tuple[list[Document], list[Document]]:
            # (the page of ids found, the photos of it claimed)
            # Only ids: the claim reads the claimed photos whole anyway.
            page = await (
                self._photos.find({**query, "_id": {"$gt": after}}, {"_id": 1})
                .sort("_id", 1)
                .to_list(self._batch_size)
            )
            batch = [d for d in page if Record.of(d).id not in known_failures]
            return page, await self._claim(batch, owner, include_capture_date) if batch else []

        scanning = asyncio.create_task(find_and_claim(""))
        writing: asyncio.Task[Batch] | None = None
        try:
            while True:
                page, mine = await scanning
                if page:
                    scanning = asyncio.create_task(find_and_claim(Record.of(page[-1]).id))
                outcomes = await self._find_all(mine)
                if writing is not None:
                    await self._count(result, await writing, on_batch)
                    writing = None
                if not page:
                    return result
                writing = asyncio.create_task(
                    self._write(owner, include_capture_date, list(zip(mine, outcomes, strict=True)))
                )
        finally:
            for task in (scanning, writing):
                if task is not None and not task.done():
                    task.cancel()

    @staticmethod
    async def _count(result: RepairResult, batch: Batch, on_batch: OnBatch | None) -> None:
        result.scanned += batch.scanned
        result.repaired += batch.repaired
        result.failed.update(batch.failures)
        if on_batch is not None:
            await on_batch(result, batch.failures)

    async def _claim(
        self, batch: list[Document], owner: str, include_capture_date: bool
    ) -> list[Document]:
        """The photos of ``batch`` this repair may work on: not claimed by another live repair,
        and, read again once claimed, still missing something (the scan that found them may
        predate another repair's write)."""
        ids = [Record.of(d).id for d in batch]
        now = now_ms()
        await self._photos.update_many(
            {
                "_id": {"$in": ids},
                "$or": [
                    {"repair_by": {"$eq": None}},
                    {"repair_until": {"$lt": now}},
                    {"repair_by": owner},
                ],
            },
            {"$set": {"repair_by": owner, "repair_until": now + CLAIM_MS}},
        )
        claimed = await (
            self._photos.find({"_id": {"$in": ids}, "repair_by": owner}, WITHOUT_OUTBOXES)
            .sort("_id", 1)
            .to_list(None)
        )
        mine = [d for d in claimed if missing_fields(PhotoRecord.of(d), include_capture_date)]
        done = [
            Record.of(d).id
            for d in claimed
            if not missing_fields(PhotoRecord.of(d), include_capture_date)
        ]
        if done:
            await self._release(done, owner)
        return mine

    async def _release(self, ids: list[str], owner: str) -> None:
        await self._photos.update_many(
            {"_id": {"$in": ids}, "repair_by": owner},
            {"$unset": {"repair_by": "", "repair_until": ""}},
        )

    async def _write(
        self, owner: str, include_capture_date: bool, outcomes: list[tuple[Document, Found | str]]
    ) -> Batch:
        writes: list[UpdateOne] = []
        pending: dict[str, outbox.Pending] = {}
        failures: dict[str, str] = {}
        unfound: list[str] = []  # asked for a capture date its file does not have
        nothing: list[str] = []  # nothing to restore: released, not counted as repaired
        for doc, found in outcomes:
            photo = PhotoRecord.of(doc)
            if isinstance(found, str):
                failures[photo.id] = found
                log.info(
                    "photo not repaired: %s",
                    found,
                    extra={"photo_id": photo.id, "event_id": photo.event_id},
                )
                continue
            # Only what was missing and is found: a photo whose file has no capture date is
            # not "repaired" (nor announced) on every run.
            fields: Document = {}
            if photo.width is None or photo.height is None:
                fields.update(width=found.width, height=found.height)
            if found.duration_ms is not None and photo.duration_ms is None:
                fields["duration_ms"] = found.duration_ms
            if include_capture_date and photo.captured_at_ms is None:
                if found.captured_at_ms is not None:
                    fields["captured_at_ms"] = found.captured_at_ms
                else:
                    unfound.append(photo.id)
            if not fields:
                nothing.append(photo.id)
                continue
            log.info(
                "repairing photo",
                extra={"photo_id": photo.id, "event_id": photo.event_id, "fields": sorted(fields)},
            )
            message = Envelope.new(
                records.PHOTO_REPAIRED,
                {
                    "photo": records.photo_public({**doc, **fields}, self._base_url),
                    "repaired_fields": sorted(PUBLIC_NAMES.get(f, f) for f in fields),
                },
            )
            ops = self._outbox.push(self._topology.events, [message], self._grace_ms)
            ops["$set"].update(fields, repaired_by=owner)
            ops["$unset"] = {"repair_by": "", "repair_until": ""}
            writes.append(
                UpdateOne(
                    {
                        "_id": photo.id,
                        "repair_by": owner,
                        "status": {"$ne": PhotoStatus.DELETING},
                    },
                    ops,
                )
            )
            pending[photo.id] = self._outbox.entries(self._topology.events, [message])
        if unfound:
            await self._photos.update_many(
                {"_id": {"$in": unfound}, "repair_by": owner, "captured_at_ms": {"$eq": None}},
                {"$set": {"capture_date_absent": True}},
            )
        if writes:
            written = await self._photos.bulk_write(writes, ordered=False)
            if written.modified_count < len(writes):
                # Some were deleted while we read them: no message for those.
                kept = {
                    Record.of(d).id
                    async for d in self._photos.find(
                        {"_id": {"$in": list(pending)}, "repaired_by": owner}, {"_id": 1}
                    )
                }
                for gone in set(pending) - kept:
                    failures[gone] = "deleted"
                    del pending[gone]
        if failures or nothing:
            await self._release([*failures, *nothing], owner)
        await self._outbox.flush_many(self._photos, pending)
        self._repaired.labels("repaired").inc(len(pending))
        for reason in failures.values():
            self._repaired.labels("missing" if reason == "original_missing" else "refused").inc()
        return Batch(len(outcomes), len(pending), failures)

    async def _find_all(self, docs: list[Document]) -> list[Found | str]:
        """The facts of each photo, or why they cannot be had (a stable reason code)."""
        found: list[Found | str | None] = [None] * len(docs)
        heads: dict[int, bytes] = {}

        photos = [PhotoRecord.of(d) for d in docs]

        async def fetch(i: int, doc: PhotoRecord) -> None:
            async with self._limit:
                try:
                    if doc.kind is PhotoKind.VIDEO:
                        found[i] = await self._video_facts(doc.original_key)
                    else:
                        heads[i] = await self._store.get_bytes(
                            doc.original_key, 0, self._head_bytes - 1
                        )
                except ObjectNotFound:
                    found[i] = "original_missing"
                except ImageRefused as exc:
                    found[i] = exc.code
                except StorageUnavailable as exc:
                    raise Retry(f"transient: {exc}") from exc

        await asyncio.gather(*(fetch(i, d) for i, d in enumerate(photos)))
        truncated = {i for i, head in heads.items() if len(head) >= self._head_bytes}
        whole_needed = {i for i in truncated if exif_at_the_end(heads[i])}
        parse_now = [i for i in heads if i not in whole_needed]
        for i, facts in zip(
            parse_now, await self._parse([heads[i] for i in parse_now]), strict=True
        ):
            if isinstance(facts, HeaderFacts):
                found[i] = Found(facts.width, facts.height, facts.captured_at_ms)
            elif i in truncated:
                whole_needed.add(i)  # the header lies beyond the head (big metadata first)
            else:
                found[i] = facts.code
        for i in whole_needed:
            try:
                whole = await self._store.get_bytes(photos[i].original_key)
            except ObjectNotFound:
                found[i] = "original_missing"
                continue
            except StorageUnavailable as exc:
                raise Retry(f"transient: {exc}") from exc
            [facts] = await self._parse([whole])
            found[i] = (
                Found(facts.width, facts.height, facts.captured_at_ms)
                if isinstance(facts, HeaderFacts)
                else facts.code
            )
        return [f if f is not None else "not_read" for f in found]

    async def _parse(self, heads: list[bytes]) -> list[HeaderFacts | ImageRefused]:
        """Parse in a few pool jobs (two per process), each job many heads."""
        if not heads:
            return []
        per_job = max(1, -(-len(heads) // (self._pool.processes * 2)))
        jobs = [heads[i : i + per_job] for i in range(0, len(heads), per_job)]
        try:
            results = await asyncio.gather(*(self._parse_job(job) for job in jobs))
        except PoolRestarted as exc:
            raise Retry(f"transient: {exc}") from exc
        return [facts for job in results for facts in job]

    async def _parse_job(self, heads: list[bytes]) -> list[HeaderFacts | ImageRefused]:
        try:
            return await self._pool.run(
                PARSE_TIME_LIMIT, header_facts_many, heads, self._max_pixels
            )
        except JobTimedOut:
            if len(heads) == 1:
                return [ImageRefused("parse_timeout", "the header took too long to read")]
        # One hostile file in the job: find it by parsing each alone.
        return [facts for head in heads for facts in await self._parse_job([head])]

    async def _video_facts(self, key: str) -> Found:
        await self._store.head(key)  # a missing object is "original_missing", not a bad video
        url = await self._store.presigned_get(key)
        facts = await probe_video(url, VIDEO_TIME_LIMIT)
        return Found(facts.width, facts.height, facts.captured_at_ms, facts.duration_ms)

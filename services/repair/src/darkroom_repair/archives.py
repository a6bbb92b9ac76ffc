"""Event archives: the ZIP an ``archive`` Operation describes, written to storage by streaming
(:func:`darkroom_kit.archive.write_archive`), and deleted when it expires.

metadata-repair carries them out because it is the worker that reads stored files already;
upload-ingest creates the Operation and serves the ZIP through a signed link.

A worker holds the Operation by a lease it renews while it writes, so a duplicate command never
makes two workers write one archive: the second waits for the lease to lapse, and if it is held
all that time its holder is alive and renewing, and this command is done. A restart (kill -9
included) leaves the command unacknowledged: the broker hands it to a replica again, which takes
the lease once it has run out and starts the archive over (the upload of the one that died is
aborted first). A failure is retried on the repair schedule; the last one, or a start past
MAX_STARTS (a worker that dies on it each time), ends the Operation failed with its reason, so it
is never left running. Reasons name files, never storage keys (the API shows them)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from darkroom_kit import records
from darkroom_kit.archive import (
    ArchiveEntry,
    ArchiveError,
    ArchiveSourceChanged,
    ArchiveSourceMissing,
    write_archive,
)
from darkroom_kit.clock import now_ms
from darkroom_kit.lease import Lease
from darkroom_kit.links import variant_name
from darkroom_kit.messaging import Message, Reject, Retry
from darkroom_kit.mongo import Document
from darkroom_kit.operations import Operations
from darkroom_kit.outbox import WITHOUT_OUTBOXES
from darkroom_kit.payloads import ArchiveRequested
from darkroom_kit.statuses import OperationState, PhotoStatus
from darkroom_kit.storage import StorageError, StorageUnavailable
from darkroom_kit.stored.operations import ArchiveParams, OperationRecord
from darkroom_kit.stored.photos import PhotoRecord
from prometheus_client import Counter
from pymongo import ReturnDocument

from darkroom_repair.deps import Deps

log = logging.getLogger(__name__)

ARCHIVE = "archive"  # the Operation kind (darkroom_ingest.jobs.ARCHIVE)
# Starts of one archive after which it is failed: each start past the first followed a worker
# that died (or lost its lease) while writing it.
MAX_STARTS = 5
STARTS = "details.starts"


def public_reason(exc: BaseException) -> str:
    """Why an archive failed, as the API may show it (no storage key, no server address)."""
    if isinstance(exc, ArchiveSourceMissing):
        return f"the file of {exc.name!r} is gone (its photo was deleted while being read)"
    if isinstance(exc, ArchiveSourceChanged):
        return f"the file of {exc.name!r} changed while being read"
    if isinstance(exc, StorageUnavailable):
        return "storage unavailable"
    return type(exc).__name__


# Beyond the longest retry delay and a lease: the redelivery and its claim take this long at most.
ABANDON_MARGIN_MS = 60_000


class Archiver:
    def __init__(self, deps: Deps) -> None:
        settings = deps.settings
        self._photos = deps.db[records.PHOTOS]
        self._operation_docs = deps.db[records.OPERATIONS]
        self._operations = Operations(deps.db, deps.operation_metrics)
        self._store = deps.store
        self._retries = len(settings.archive_retry_delays_ms)
        self._ttl_ms = int(settings.archive_ttl_seconds * 1000)
        self._part_bytes = settings.archive_part_bytes
        self._lease_ms = int(settings.archive_lease_seconds * 1000)
        # Past the longest wait for a redelivery, a running archive with a free lease has no
        # command left to end it (dead-lettered).
        self._abandoned_ms = max(settings.archive_retry_delays_ms, default=0) + self._lease_ms
        self._abandoned_ms += ABANDON_MARGIN_MS
        self._bytes = Counter(
            "archive_bytes_total",
            "Bytes of photos written into archives",
            registry=deps.registry,
        )

    async def handle(self, message: Message[ArchiveRequested]) -> None:
        op_id = message.payload.operation_id
        found = await self._operations.get(op_id)
        if found is None or found.final:
            return  # unknown, or a duplicate of finished work
        if found.kind != ARCHIVE:
            raise Reject(f"operation {op_id} is a {found.kind}, not an archive")
        lease = self._operations.lease(op_id, self._lease_ms)
        op = await self._claim(lease)
        if op is None:
            log.info("archive left to the worker that holds it", extra={"operation_id": op_id})
            return
        key = records.archive_key(str(op.params.get("event_id")), op_id)
        starts = await self._count_start(op_id)
        if starts > MAX_STARTS:
            await self._operations.fail(
                op_id, f"started {starts - 1} times without ending", lease=lease
            )
            return
        try:
            async with lease:
                await self._make(op, lease)
        except Exception as exc:
            log.warning(
                "archive not written",
                extra={"operation_id": op_id, "attempt": message.attempt},
                exc_info=True,
            )
            if message.attempt > self._retries:
                await self._operations.fail(op_id, public_reason(exc), lease=lease)
                # Written but not recorded (the last write failed), or its upload left open:
                # nothing would expire either.
                await self._discard(key, op_id)
                return
            await self._operations.release(lease)
            if isinstance(exc, ArchiveError | StorageUnavailable):
                # A photo deleted (or changed) while it was read: the next try selects again.
                raise Retry(public_reason(exc)) from exc
            raise

    async def _claim(self, lease: Lease) -> OperationRecord | None:
        """The Operation, held by ``lease``; None when it ended, or when another holder kept it
        for a whole lease (that holder is alive: it renews, and its own command is still
        unacknowledged). A holder that died frees it within a lease."""
        deadline = time.monotonic() + lease.lease_ms / 1000 + 1
        while True:
            op = await self._operations.claim(lease, now_ms())
            if op is not None:
                return op
            current = await self._operations.get(str(lease.doc_id))
            if current is None or current.final or time.monotonic() > deadline:
                return None
            await asyncio.sleep(min(0.5, lease.lease_ms / 3000))

    async def _count_start(self, op_id: str) -> int:
        doc = await self._operation_docs.find_one_and_update(
            {"_id": op_id},
            {"$inc": {STARTS: 1}},
            {"details": 1},
            return_document=ReturnDocument.AFTER,
        )
        return int(((doc or {}).get("details") or {}).get("starts", 1))

    async def _make(self, op: OperationRecord, lease: Lease) -> None:
        params = ArchiveParams.model_validate(op.params)
        key = records.archive_key(params.event_id, op.id)
        # What a replica that died mid-way left open: its parts would be kept (and billed) until
        # the bucket's lifecycle rule, if any, removed them.
        try:
            await self._abort_uploads(key)
        except StorageUnavailable as exc:
            raise Retry(f"storage: {exc}") from exc
        selected_ms = now_ms()
        entries, photo_ids, skipped = await self._select(params)
        if not entries:
            await self._operations.fail(
                op.id,
                "empty_selection: none of the photos is there any more (or has the variant)",
                lease=lease,
            )
            return
        files_total, bytes_total = len(entries), sum(e.size for e in entries)

        async def progress(files: int, done_bytes: int) -> None:
            await self._operations.report(
                op.id,
                {
                    "files": files,
                    "files_total": files_total,
                    "bytes": done_bytes,
                    "bytes_total": bytes_total,
                    "skipped": skipped,
                },
                lease=lease,
            )

        await progress(0, 0)
        made = await write_archive(
            self._store, entries, key, part_size=self._part_bytes, progress=progress
        )
        self._bytes.inc(bytes_total)
        await self._operations.finish(
            op.id,
            {
                "key": key,
                "filename": f"{params.event_id}-{op.id}.zip",
                "size": made.size,
                "sha256": made.sha256,
                "files": made.files,
                "skipped": skipped,
                "expires_ms": now_ms() + self._ttl_ms,
                "selected_ms": selected_ms,
            },
            {
                "files": made.files,
                "files_total": files_total,
                "bytes": bytes_total,
                "bytes_total": bytes_total,
                "skipped": skipped,
            },
            lease=lease,
            # Serving checks these are all still there once a photo of the event went away
            # after they were read (selected_ms).
            internal={"photo_ids": photo_ids},
        )
        log.info(
            "archive written",
            extra={"operation_id": op.id, "event_id": params.event_id, "size": made.size},
        )

    async def _select(self, params: ArchiveParams) -> tuple[list[ArchiveEntry], list[str], int]:
        """The entries of the archive, in order, their photos' ids, and how many photos were
        left out (no such variant yet, or gone since the request)."""
        query: Document = {"event_id": params.event_id, "status": {"$ne": PhotoStatus.DELETING}}
        if not params.include_hidden:
            query["is_hidden"] = {"$ne": True}
        if params.photo_ids is not None:
            query["_id"] = {"$in": params.photo_ids}
        docs = [
            d
            async for d in self._photos.find(
                query, WITHOUT_OUTBOXES, sort=[("created_ms", 1), ("_id", 1)]
            )
        ]
        if params.photo_ids is not None:
            order = {photo_id: i for i, photo_id in enumerate(params.photo_ids)}
            docs.sort(key=lambda d: order[str(d["_id"])])
            missing = len(params.photo_ids) - len(docs)
        else:
            missing = 0
        entries: list[ArchiveEntry] = []
        photo_ids: list[str] = []
        skipped = missing
        for doc in docs:
            entry = _entry(PhotoRecord.of(doc), params.variant)
            if entry is None:
                skipped += 1
            else:
                entries.append(entry)
                photo_ids.append(str(doc["_id"]))
        return entries, photo_ids, skipped

    async def _abort_uploads(self, key: str) -> None:
        for upload_id in await self._store.open_multipart_uploads(key):
            await self._store.abort_multipart(key, upload_id)

    async def _discard(self, key: str, op_id: str) -> None:
        """What a failed archive may have left in storage: its ZIP, written but never recorded
        (the database was away), or the upload its worker had begun."""
        try:
            await self._abort_uploads(key)
            await self._store.delete_many([key])
        except StorageError:
            log.warning(
                "a failed archive's objects were not deleted",
                extra={"operation_id": op_id},
                exc_info=True,
            )

    async def expire(self) -> int:
        """Delete the archives past their expiry; how many. Fail those abandoned mid-way (their
        command dead-lettered while they were running), which would hold their event for good."""
        abandoned = await self._operations.fail_abandoned(
            ARCHIVE,
            self._abandoned_ms,
            "abandoned: its worker gave up on it without ending it; ask again",
        )
        # One never started within its own lifetime is of no use any more (its command was
        # dead-lettered before any claim, or the queue is that far behind).
        abandoned += await self._operations.fail_abandoned(
            ARCHIVE,
            self._ttl_ms,
            "abandoned: not started within ARCHIVE_TTL_SECONDS; ask again",
            state=OperationState.QUEUED,
        )
        for op_id in abandoned:
            op = await self._operations.get(op_id)
            if op is not None:
                await self._discard(
                    records.archive_key(str(op.params.get("event_id")), op_id), op_id
                )
        if abandoned:
            log.warning("abandoned archives failed", extra={"operation_ids": abandoned})
        now = now_ms()
        expired = [
            d
            async for d in self._operation_docs.find(
                {
                    "kind": ARCHIVE,
                    "state": OperationState.DONE,
                    "result.expires_ms": {"$lte": now},
                    "result.deleted_ms": {"$exists": False},
                },
                {"_id": 1, "result": 1},
                limit=500,
            )
        ]
        for doc in expired:
            key = str(doc["result"]["key"])
            await self._store.delete_many([key])
            await self._operation_docs.update_one(
                {"_id": doc["_id"]}, {"$set": {"result.deleted_ms": now}}
            )
            log.info("archive expired", extra={"operation_id": doc["_id"]})
        return len(expired)


def _entry(photo: PhotoRecord, variant: str) -> ArchiveEntry | None:
    modified = datetime.fromtimestamp((photo.captured_at_ms or photo.created_ms) / 1000, UTC)
    if variant == "original":
        return ArchiveEntry(
            key=photo.original_key,
            name=photo.original_filename or photo.filename,
            size=photo.size,
            modified=modified.replace(tzinfo=None),
        )
    stored = photo.variants.get(variant)
    if stored is None or stored.size is None:
        return None
    return ArchiveEntry(
        key=stored.key,
        name=variant_name(photo.filename, stored.content_type),
        size=stored.size,
        modified=modified.replace(tzinfo=None),
    )

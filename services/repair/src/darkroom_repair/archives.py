"""Event archives: the ZIP an ``archive`` Operation describes, written to storage by streaming
(:func:`darkroom_kit.archive.write_archive`), and deleted when it expires.

metadata-repair carries them out because it is the worker that reads stored files already;
upload-ingest creates the Operation and serves the ZIP through a signed link.

A restart (kill -9 included) leaves the command unacknowledged: the broker hands it to a
replica again, which starts the archive over (the upload of the one that died is aborted first).
A failure is retried on the repair schedule; the last one ends the Operation failed with its
reason, so it is never left running."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from darkroom_kit import records
from darkroom_kit.archive import ArchiveEntry, ArchiveError, write_archive
from darkroom_kit.clock import now_ms
from darkroom_kit.links import variant_name
from darkroom_kit.messaging import Message, Reject, Retry
from darkroom_kit.mongo import Document
from darkroom_kit.operations import Operations
from darkroom_kit.payloads import ArchiveRequested
from darkroom_kit.statuses import OperationState, PhotoStatus
from darkroom_kit.storage import StorageUnavailable
from darkroom_kit.stored.operations import ArchiveParams, OperationRecord
from darkroom_kit.stored.photos import PhotoRecord
from prometheus_client import Counter

from darkroom_repair.deps import Deps

log = logging.getLogger(__name__)

ARCHIVE = "archive"  # the Operation kind (darkroom_ingest.jobs.ARCHIVE)


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
        self._bytes = Counter(
            "archive_bytes_total",
            "Bytes of photos written into archives",
            registry=deps.registry,
        )

    async def handle(self, message: Message[ArchiveRequested]) -> None:
        op_id = message.payload.operation_id
        op = await self._operations.start(op_id)
        if op is None:
            return  # unknown, or a duplicate of finished work
        if op.kind != ARCHIVE:
            raise Reject(f"operation {op_id} is a {op.kind}, not an archive")
        try:
            await self._make(op)
        except ArchiveError as exc:
            # A photo deleted (or changed) while it was read: the next try selects again.
            await self._give_up_if_last(message.attempt, op_id, str(exc))
            raise Retry(str(exc)) from exc
        except Exception as exc:
            await self._give_up_if_last(message.attempt, op_id, f"{type(exc).__name__}: {exc}")
            raise

    async def _give_up_if_last(self, attempt: int, op_id: str, reason: str) -> None:
        if attempt > self._retries:
            await self._operations.fail(op_id, reason)

    async def _make(self, op: OperationRecord) -> None:
        params = ArchiveParams.model_validate(op.params)
        key = records.archive_key(params.event_id, op.id)
        # What a replica that died mid-way left open: its parts would be kept (and billed) until
        # the bucket's lifecycle rule, if any, removed them.
        try:
            for upload_id in await self._store.open_multipart_uploads(key):
                await self._store.abort_multipart(key, upload_id)
        except StorageUnavailable as exc:
            raise Retry(f"storage: {exc}") from exc
        entries, skipped = await self._select(params)
        if not entries:
            await self._operations.fail(
                op.id, "empty_selection: none of the photos is there any more (or has the variant)"
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
            )

        await progress(0, 0)
        try:
            made = await write_archive(
                self._store, entries, key, part_size=self._part_bytes, progress=progress
            )
        except StorageUnavailable as exc:
            raise Retry(f"storage: {exc}") from exc
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
            },
            {
                "files": made.files,
                "files_total": files_total,
                "bytes": bytes_total,
                "bytes_total": bytes_total,
                "skipped": skipped,
            },
        )
        log.info(
            "archive written",
            extra={"operation_id": op.id, "event_id": params.event_id, "size": made.size},
        )

    async def _select(self, params: ArchiveParams) -> tuple[list[ArchiveEntry], int]:
        """The entries of the archive, in order, and how many photos were left out (no such
        variant yet, or gone since the request)."""
        query: Document = {"event_id": params.event_id, "status": {"$ne": PhotoStatus.DELETING}}
        if not params.include_hidden:
            query["is_hidden"] = {"$ne": True}
        if params.photo_ids is not None:
            query["_id"] = {"$in": params.photo_ids}
        docs = [d async for d in self._photos.find(query, sort=[("created_ms", 1), ("_id", 1)])]
        if params.photo_ids is not None:
            order = {photo_id: i for i, photo_id in enumerate(params.photo_ids)}
            docs.sort(key=lambda d: order[str(d["_id"])])
            missing = len(params.photo_ids) - len(docs)
        else:
            missing = 0
        entries: list[ArchiveEntry] = []
        skipped = missing
        for doc in docs:
            entry = _entry(PhotoRecord.of(doc), params.variant)
            if entry is None:
                skipped += 1
            else:
                entries.append(entry)
        return entries, skipped

    async def expire(self) -> int:
        """Delete the archives past their expiry; how many."""
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

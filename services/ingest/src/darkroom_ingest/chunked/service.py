"""The chunked upload use cases: the machine's rules (machine.py) carried out on the records
(store.py) and the bytes (parts.py), and the photo made from a completed upload."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.errors import ServiceError, not_found
from darkroom_kit.ids import new_id
from darkroom_kit.lease import Lease
from darkroom_kit.mongo import Database, Document
from darkroom_kit.problems import FieldError
from darkroom_kit.statuses import UploadState
from darkroom_kit.storage import PartBody, S3ObjectStore, StorageError
from darkroom_kit.stored.events import EventRecord
from darkroom_kit.stored.uploads import StoredChunk, UploadProtocol, UploadRecord

from darkroom_ingest import errors, filenames, sniff
from darkroom_ingest.chunked import machine
from darkroom_ingest.chunked.digests import ChunkHasher, Digests
from darkroom_ingest.chunked.parts import MultipartParts
from darkroom_ingest.chunked.store import UploadRecords
from darkroom_ingest.chunked.views import chunk_out
from darkroom_ingest.direct.objects import ClaimedParts, DirectObjects
from darkroom_ingest.photos import PhotoService, ensure_accepts_uploads
from darkroom_ingest.settings import IngestSettings
from darkroom_ingest.stores import Conflict
from darkroom_ingest.upload_metrics import UploadMetrics
from darkroom_ingest.uploads import StoredFile

log = logging.getLogger(__name__)


def _record(doc: Document | UploadRecord) -> UploadRecord:
    return doc if isinstance(doc, UploadRecord) else UploadRecord.of(doc)


class ChunkedUploads:
    def __init__(
        self,
        db: Database,
        store: S3ObjectStore,
        photos: PhotoService,
        settings: IngestSettings,
        metrics: UploadMetrics,
    ) -> None:
        self.records = UploadRecords(db)
        self.col = self.records.col
        self.parts = MultipartParts(store)
        self.direct = DirectObjects(store, self.parts)  # a direct upload's bytes (direct/)
        self.rules = machine.Rules.of(settings)
        self._photos = photos
        # Each completion that ends, chunked, tus and direct alike (by the upload's protocol).
        self._metrics = metrics
        self._complete_wait_s = settings.complete_wait_seconds
        self._buffers = asyncio.Semaphore(settings.max_buffered_chunks)
        self._buffer_wait_s = settings.body_idle_timeout_seconds
        self._lease_ms = int(settings.lock_lease_seconds * 1000)

    async def ensure_indexes(self) -> None:
        await self.records.ensure_indexes()

    # ---- create and read -------------------------------------------------------------------

    async def create(
        self,
        event: Document,
        filename: str,
        size: int,
        mime_type: str,
        sha256: str | None,
        *,
        hidden: bool = False,
        keep_duplicates: bool | None = None,
        admitted: Callable[[], Awaitable[None]] | None = None,
    ) -> Document:
        """``admitted`` runs once the file passed every check, before anything is stored (a
        guest link counts the file then, never one it refuses)."""
        name = self.rules.admit(filename, size, mime_type)
        record = EventRecord.of(event)
        ensure_accepts_uploads(record)
        if admitted is not None:
            await admitted()
        upload = await self.open(
            record,
            name,
            size,
            mime_type,
            sha256,
            layout=self.rules.layout(size),
            expires_in_ms=self.rules.expiry_ms,
            hidden=hidden,
            keep_duplicates=keep_duplicates,
        )
        return upload.document()

    async def open(
        self,
        event: EventRecord,
        name: str,
        size: int,
        mime_type: str,
        sha256: str | None,
        *,
        layout: machine.Layout,
        expires_in_ms: int,
        protocol: UploadProtocol = "chunked",
        multipart: bool = True,
        hidden: bool = False,
        keep_duplicates: bool | None = None,
    ) -> UploadRecord:
        """The record of an admitted upload to the original's key (its photo id chosen now),
        with its S3 multipart upload when it has one."""
        photo_id = new_id("ph")
        key = records.original_key(event.id, photo_id)
        # The multipart upload first: a record never names one that does not exist (the orphan
        # sweep removes one whose record was never written).
        s3_upload_id = await self.parts.begin(key, mime_type) if multipart else ""
        now = now_ms()
        upload = UploadRecord(
            id=new_id("up"),
            protocol=protocol,
            event_id=event.id,
            event_slug=event.slug,
            photo_id=photo_id,
            key=key,
            s3_upload_id=s3_upload_id,
            filename=name,
            size=size,
            mime_type=mime_type,
            sha256=sha256,
            chunk_size=layout.chunk_size,
            chunk_count=layout.chunk_count,
            state=UploadState.OPEN,
            created_ms=now,
            expires_ms=now + expires_in_ms,
            hidden=hidden,
            keep_duplicates=keep_duplicates,
        )
        await self.records.insert(upload)
        return upload

    async def record(self, upload_id: str, *, with_parts: bool = True) -> UploadRecord:
        return await self.records.get(upload_id, with_parts=with_parts)

    async def get(self, upload_id: str, *, with_parts: bool = True) -> Document:
        return (await self.record(upload_id, with_parts=with_parts)).document()

    # ---- chunks ----------------------------------------------------------------------------

    async def put_chunk(
        self,
        doc: Document | UploadRecord,
        index: int,
        content_length: int | None,
        digests: Digests,
        body: AsyncIterator[bytes],
    ) -> dict[str, Any]:
        """Keep chunk ``index``. A chunk is held whole in memory until S3 takes it (a part's
        length must be known before its first byte), so only so many are held at once: a
        hundred stalled connections cannot take the process's memory."""
        upload = _record(doc)
        # Refusals that need no byte come before the wait for a buffer.
        expected = machine.check_chunk(upload, index, content_length, now_ms())
        try:
            async with asyncio.timeout(self._buffer_wait_s):
                await self._buffers.acquire()
        except TimeoutError:
            raise errors.TOO_MANY_BODIES.error(
                "Too many chunks are arriving at once; send this one again shortly.",
                retry_after=2,
            ) from None
        try:
            part = PartBody()
            hasher = ChunkHasher(sha256=digests.sha256 is not None)
            head = b""
            async for piece in body:
                if index == 0 and len(head) < sniff.SNIFF_BYTES:
                    head += bytes(piece[: sniff.SNIFF_BYTES])
                part.append(piece)
                hasher.update(piece)
            got = hasher.digests()
            machine.check_body(index, expected, len(part), digests, got)
            if index == 0:
                # The real type's limit as soon as its bytes say what it is, not the declared
                # one's until completion: a 60 MB JPEG declared as video/mp4 stops at chunk 0.
                kind = sniff.sniff(head)
                if kind is not None:
                    self.rules.check_size(kind.content_type, upload.size)
            stored = await self.parts.put(upload, index, part)
            chunk = StoredChunk(
                etag=stored.etag,
                size=stored.size,
                crc32c=got.crc32c,
                sha256=got.sha256,
                at_ms=now_ms(),
            )
            head_kept = head[: sniff.SNIFF_BYTES] if index == 0 else None
            if not await self.records.record_chunk(upload.id, index, chunk, head_kept):
                raise machine.closed_while_sending()
            return {"index": index, **chunk_out(chunk)}
        finally:
            self._buffers.release()

    # ---- complete --------------------------------------------------------------------------

    async def complete(
        self, upload_id: str, *, claimed_parts: ClaimedParts | None = None
    ) -> Document:
        """Create the photo exactly once; concurrent and repeated calls all get it.
        ``claimed_parts``: those a direct upload's client says it sent, checked against S3's."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._complete_wait_s
        pause = 0.05
        while True:
            upload = await self.records.get(upload_id)
            if machine.completion(upload, now_ms()) is machine.Completion.DONE:
                return await self._photo_of(upload)
            lease = self.records.lease(upload_id, self._lease_ms)
            claimed = await self.records.claim(upload_id, lease, now_ms())
            if claimed is not None:
                return await self._finish(claimed, lease, claimed_parts)
            # Another request is completing it: wait for its answer while its lease is renewed,
            # and take over once it is not (its process died).
            if loop.time() + pause > deadline:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
        raise errors.COMPLETE_IN_PROGRESS.error("Ask again shortly.", retry_after=2)

    async def _finish(
        self, upload: UploadRecord, lease: Lease, claimed: ClaimedParts | None = None
    ) -> Document:
        # The lease is renewed while the photo is made; the writes that end the completion come
        # after, so no renewal races them.
        try:
            async with lease:
                photo = await self._make_photo(upload, claimed)
        except ServiceError as error:
            # Aborting the multipart upload of one that lost its lease would pull its parts from
            # under the completer that took it over.
            if await self.records.fail(lease, machine.failure_of(error)):
                # The refused file, wherever the refusal came (before or after its parts were
                # assembled, or from the event's cap): nobody owns its bytes now.
                self._metrics.refused(upload.protocol, error.code)
                await self._drop(upload)
            raise
        except StorageError:
            await self.records.reopen(lease)
            raise
        copy_of = photo["_id"] if photo["_id"] != upload.photo_id else None
        if await self.records.mark_completed(upload.id, now_ms(), duplicate_of=copy_of):
            self._metrics.accepted(upload.protocol)  # a duplicate too: its photo is the answer
        if copy_of is not None:
            # Recorded first: a completer killed before this would find the object to compare
            # again; one killed after it leaves an orphan for the sweep.
            await self.parts.discard(upload.key)
        return photo

    async def _make_photo(
        self, upload: UploadRecord, claimed: ClaimedParts | None = None
    ) -> Document:
        # A completer that died after creating the photo but before recording it: the photo is
        # there, so only the record is finished (never a second photo, never counted twice).
        existing = await self._photos.photos.col.find_one({"_id": upload.photo_id})
        if existing is not None:
            return existing
        if upload.protocol == "direct":
            # Its bytes never passed here: S3 says what they are (its parts, size, head, tail).
            kind = await self.direct.assemble(upload, self.rules, claimed)
        else:
            kind = self.rules.content(upload.head or b"", upload.size)
            await self.parts.assemble(upload)
            await self.parts.check_end(upload.key, kind, upload.head or b"", upload.size)
        if upload.sha256:
            await self._verify_sha256(upload)
        stored = StoredFile(
            upload.photo_id,
            upload.key,
            filenames.with_extension(upload.filename, kind.extension),
            upload.filename,
            kind,
            upload.size,
            upload.sha256,
            upload.hidden,
        )
        event = EventRecord.maybe(await self._photos.events.get(upload.event_id))
        if event is None:
            raise not_found("event", upload.event_id)
        try:
            committed = await self._photos.commit_batch(
                event,
                [stored],
                None,
                keep_duplicates=_keeps_duplicates(upload),
                discard_duplicates=False,
            )
        except Conflict:
            # Another completer created it first: one that took over a lease this one lost
            # (its renewals failed for longer than the lease). The photo is the same one.
            landed = await self._photos.photos.col.find_one({"_id": upload.photo_id})
            if landed is None:
                raise
            return landed
        return committed[0].photo.document()

    async def _verify_sha256(self, upload: UploadRecord) -> None:
        if await self.parts.sha256_hex(upload.key) != upload.sha256:
            raise errors.FILE_CHECKSUM_MISMATCH.error(
                "The assembled file differs from the sha256 given at creation; nothing was kept.",
                errors=[FieldError("/sha256", "does not match the content", "checksum_mismatch")],
            )

    async def _photo_of(self, upload: UploadRecord) -> Document:
        photo_id = upload.duplicate_of or upload.photo_id
        photo = await self._photos.photos.col.find_one({"_id": photo_id})
        if photo is None:
            raise not_found("photo", photo_id)
        return photo

    # ---- cancel and expire -----------------------------------------------------------------

    async def cancel(self, upload_id: str) -> None:
        upload = await self.records.get(upload_id, with_parts=False)
        aborted = await self.records.abort(upload_id)
        if aborted is not None:
            await self._drop(aborted)
            return
        state = upload.state
        if state is UploadState.OPEN:  # it moved since it was read: its state now
            state = (await self.records.get(upload_id, with_parts=False)).state
        refusal = machine.cancel_refusal(state)
        if refusal is not None:
            raise refusal

    async def expire_due(self, limit: int = 500) -> int:
        expired = 0
        for _ in range(limit):
            upload = await self.records.expire_next(now_ms())
            if upload is None:
                break
            await self._drop(upload)
            expired += 1
        return expired + await self.finish_abandoned(limit)

    async def _drop(self, upload: UploadRecord) -> None:
        """The bytes of an upload that is over without a photo: its multipart upload, the
        object at its key (assembled, or a direct upload's), and a tus upload's pieces."""
        if upload.s3_upload_id:
            await self.parts.abort(upload)
        await self.parts.discard_many([upload.key, *upload.piece_keys])

    async def finish_abandoned(self, limit: int = 100) -> int:
        """Completes whose process died and whose client never asked again: the client asked
        for the photo, so it is made (exactly once, as a complete would), rather than the
        upload left "completing" for ever with its object owned by nobody."""
        finished = 0
        async for upload_id in self.records.abandoned(now_ms(), limit):
            try:
                photo = await self.complete(upload_id)
            except (ServiceError, StorageError) as exc:
                log.warning(
                    "abandoned complete could not be finished: %s",
                    exc,
                    extra={"upload_id": upload_id},
                )
                continue
            log.info(
                "abandoned complete finished",
                extra={"upload_id": upload_id, "photo_id": photo["_id"]},
            )
            finished += 1
        return finished


def _keeps_duplicates(upload: UploadRecord) -> bool | None:
    """As asked at creation; a tus client asks in Upload-Metadata (``keep_duplicates``)."""
    if upload.keep_duplicates is not None or upload.protocol != "tus":
        return upload.keep_duplicates
    flag = upload.metadata.get("keep_duplicates")
    return None if flag is None else flag.strip().lower() in ("1", "true", "yes")

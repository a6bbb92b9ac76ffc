"""tus uploads on the chunked upload's machine: the same record, the same S3 multipart upload,
the same completion (exactly once, limits by real type, the event's cap, ``photo.uploaded``).

tus sends the bytes in order and in pieces of any size, S3 wants parts of at least 5 MiB, so
the bytes of a PATCH are cut into parts of the upload's ``chunk_size`` as they arrive, and what is
left at the end of a PATCH, under a part, waits for the next PATCHes in the upload's tail: piece
objects, one per PATCH, each holding only that PATCH's rest, named in order by the record. The
PATCH whose bytes reach a part makes it of the pieces' bytes and its own, and deletes the pieces
once the part is recorded: a byte is written to S3 twice at most (in a piece, then in its part),
not once per PATCH as when one growing tail is rewritten (tusd's and @tus/s3-store's incomplete
part). Only PATCHes of under a part / ``MAX_PIECES`` bytes (64 KiB with 8 MiB parts) rewrite
the tail, into one piece, once per ``MAX_PIECES`` PATCHes, so that the record stays small.
The bytes of the pieces a process wrote stay in a bounded cache, so the PATCH that makes their
part on the same replica does not read them back; on another replica, or after a restart, it
does. Memory stays at one part per PATCH, plus that cache.

Without ``Upload-Checksum`` every part is recorded as soon as S3 has it, so a client or a server
that dies mid-PATCH resumes from the last part (and a client that goes away keeps what it sent).
With one, nothing of the PATCH is recorded until the whole body matched: a mismatch leaves the
upload as it was (the parts it wrote are written again by the next PATCH).
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

import aiohttp
from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.errors import ServiceError
from darkroom_kit.ids import new_id
from darkroom_kit.lease import Lease
from darkroom_kit.mongo import Document
from darkroom_kit.problems import FieldError
from darkroom_kit.statuses import UploadState
from darkroom_kit.storage import PartBody, S3ObjectStore, StorageError
from darkroom_kit.stored.events import EventRecord
from darkroom_kit.stored.uploads import StoredChunk, UploadRecord

from darkroom_ingest import errors, sniff
from darkroom_ingest.chunked import machine
from darkroom_ingest.chunked.service import ChunkedUploads
from darkroom_ingest.photos import ensure_accepts_uploads
from darkroom_ingest.settings import IngestSettings
from darkroom_ingest.tus.protocol import Checksum, Concat
from darkroom_ingest.tus.store import TusRecords

S = UploadState
# The event of a partial upload whose client named none: the final upload that joins it does.
NO_EVENT = "_unbound"
S3_MIN_PART = 5 * 1024 * 1024
# The media type of an upload whose client said none (its bytes say it at completion).
UNTYPED = "application/octet-stream"
# A body that stops early: the client went away (or its proxy did).
DISCONNECTED = (ConnectionError, aiohttp.ClientPayloadError)
# The bytes of recent pieces a process keeps (a part's worth each for 8 uploads at once).
PIECE_CACHE_BYTES = 64 * 1024 * 1024
# A tail of more pieces than this (PATCHes of a few KiB) is rewritten as one piece, so that the
# record naming them stays small; a tail is rewritten at most once per this many PATCHes.
MAX_PIECES = 128
# Pieces read from S3 at once, when they are not in the cache.
PIECE_READS = 8


@dataclass(frozen=True, slots=True)
class Written:
    """What a PATCH left: the upload as recorded, and the photo when it was the last piece."""

    upload: UploadRecord
    photo: Document | None = None


class _Pending:
    """The bytes of a PATCH not yet in a part or a piece: taken from the front, as the chunks
    they arrived in (never joined)."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self.size = 0

    def append(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self.size += len(data)

    def take(self, count: int) -> list[bytes]:
        taken: list[bytes] = []
        self.size -= count
        while count > 0:
            first = self._chunks[0]
            if len(first) <= count:
                taken.append(self._chunks.popleft())
                count -= len(first)
            else:
                taken.append(first[:count])
                self._chunks[0] = first[count:]
                count = 0
        return taken

    def take_all(self) -> list[bytes]:
        return self.take(self.size)


class _PieceCache:
    """The bytes of the pieces this process wrote lately, at most ``limit`` in all (the least
    recently used go first). A piece's key is new for each piece and its object is never
    rewritten, so bytes found here are its object's, whichever replica asks S3 meanwhile."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._pieces: OrderedDict[str, tuple[list[bytes], int]] = OrderedDict()
        self.size = 0

    def put(self, key: str, chunks: list[bytes], size: int) -> None:
        if size > self._limit:
            return
        self._pieces[key] = (chunks, size)
        self.size += size
        while self.size > self._limit:
            _, (_, dropped) = self._pieces.popitem(last=False)
            self.size -= dropped

    def get(self, key: str) -> list[bytes] | None:
        found = self._pieces.get(key)
        if found is None:
            return None
        self._pieces.move_to_end(key)
        return found[0]

    def drop(self, keys: Iterable[str]) -> None:
        for key in keys:
            found = self._pieces.pop(key, None)
            if found is not None:
                self.size -= found[1]


class TusUploads:
    def __init__(
        self,
        chunked: ChunkedUploads,
        store: S3ObjectStore,
        settings: IngestSettings,
        *,
        piece_cache_bytes: int = PIECE_CACHE_BYTES,
    ) -> None:
        self._chunked = chunked
        self._records = chunked.records
        self._tus = TusRecords(chunked.records)
        self._store = store
        self._rules = chunked.rules
        self._lease_ms = int(settings.lock_lease_seconds * 1000)
        self._pieces = _PieceCache(piece_cache_bytes)

    @property
    def max_size(self) -> int:
        return self._rules.max_size

    # ---- creation --------------------------------------------------------------------------

    async def create(
        self,
        event: EventRecord | None,
        length: int | None,
        metadata: dict[str, str],
        concat: Concat | None,
        *,
        token_id: str | None = None,
        hidden: bool = False,
        partials: list[str] | None = None,
        admitted: Callable[[], Awaitable[None]] | None = None,
    ) -> UploadRecord:
        """A new upload of ``length`` bytes (None: said later); a partial one when ``concat``
        says so, which may name no event (None) until the final upload that joins it; the final
        one of ``partials``. ``admitted`` runs once it passed every check, before anything is
        stored."""
        if event is not None:
            ensure_accepts_uploads(event)
        filename = metadata.get("filename") or metadata.get("name") or "upload"
        declared = metadata.get("filetype") or metadata.get("type") or None
        declared = declared or mimetypes.guess_type(filename)[0]
        if length is not None and length < 1:
            raise errors.TUS_INVALID_HEADER.error(
                "An upload has at least one byte.",
                errors=[FieldError("Upload-Length", "at least 1", "invalid_header")],
            )
        if declared is not None:
            name = self._rules.admit(filename, 0, declared)
        else:
            # No type said: the limit of the largest type for now, that of the real one (sniffed
            # from its bytes) once it is whole.
            name = self._rules.name_of(filename)
        if length is not None:
            self._rules.check_size(declared, length, "Upload-Length")
        partial = concat is not None and concat.partial
        if event is None and not partial:
            raise errors.TUS_EVENT_REQUIRED.error("Name the event in Upload-Metadata.")
        if admitted is not None:
            await admitted()
        event_id = event.id if event is not None else NO_EVENT
        photo_id = new_id("ph")
        key = (
            records.piece_key(event_id, photo_id, "partial")
            if partial
            else records.original_key(event_id, photo_id)
        )
        layout = self._rules.layout(length if length is not None else self.max_size)
        # The multipart upload first: a record never names one that does not exist (the orphan
        # sweep removes one whose record was never written).
        s3_upload_id = await self._store.create_multipart(key, declared or UNTYPED)
        now = now_ms()
        upload = UploadRecord(
            id=new_id("up"),
            protocol="tus",
            event_id=event_id,
            event_slug=event.slug if event is not None else "",
            token_id=token_id,
            photo_id=photo_id,
            key=key,
            s3_upload_id=s3_upload_id,
            filename=name,
            size=length or 0,
            length_deferred=length is None,
            mime_type=declared or UNTYPED,
            chunk_size=max(layout.chunk_size, S3_MIN_PART),
            chunk_count=0,
            state=S.OPEN,
            created_ms=now,
            expires_ms=now + self._rules.expiry_ms,
            concat="partial" if partial else ("final" if partials else None),
            partials=partials or [],
            metadata=metadata,
            hidden=hidden,
        )
        await self._records.insert(upload)
        return upload

    async def create_final(
        self,
        event: EventRecord,
        partial_ids: tuple[str, ...],
        metadata: dict[str, str],
        *,
        token_id: str | None = None,
        hidden: bool = False,
        admitted: Callable[[], Awaitable[None]] | None = None,
    ) -> Written:
        """An upload made of finished partial uploads, in order: complete at once."""
        ensure_accepts_uploads(event)
        partials = [await self._records.get(i, with_parts=False) for i in partial_ids]
        for partial in partials:
            unbound_but_mine = partial.event_id == NO_EVENT and partial.token_id == token_id
            if (
                partial.protocol != "tus"
                or partial.concat != "partial"
                or not (partial.event_id == event.id or unbound_but_mine)
            ):
                raise errors.UPLOAD_NOT_FOUND.error(f"No partial upload with id {partial.id!r}.")
            if partial.state is not S.OPEN or not partial.assembled:
                raise errors.TUS_PARTIAL_UNFINISHED.error(
                    f"Upload {partial.id} is {partial.state.value} with "
                    f"{partial.offset} of {partial.size} bytes; finish every partial first.",
                    extra={"upload_id": partial.id},
                )
        first = partials[0]
        meta = {**first.metadata, **metadata}
        upload = await self.create(
            event,
            sum(p.size for p in partials),
            meta,
            None,
            token_id=token_id,
            hidden=hidden,
            partials=list(partial_ids),
            admitted=admitted,
        )

        # The partials' bytes, in order, cut into the final upload's parts: they pass through
        # this service once (S3's UploadPartCopy would need every partial but the last to be a
        # multiple of the part size).
        async def joined() -> AsyncIterator[bytes]:
            for partial in partials:
                async with self._store.open_stream(partial.key) as (_, chunks):
                    async for chunk in chunks:
                        yield chunk

        written = await self.append(upload.id, 0, None, None, joined(), internal=True)
        await self._tus.mark_consumed(list(partial_ids), now_ms())
        await self._store.delete_many([p.key for p in partials])
        return written

    # ---- reading ---------------------------------------------------------------------------

    async def get(self, upload_id: str) -> UploadRecord:
        upload = await self._records.get(upload_id, with_parts=False)
        if upload.protocol != "tus":
            raise errors.UPLOAD_NOT_FOUND.error(f"No tus upload with id {upload_id!r}.")
        return upload

    def check_readable(self, upload: UploadRecord) -> None:
        """HEAD answers an open or finished upload; one that is over otherwise is gone."""
        if upload.state in (S.ABORTED, S.EXPIRED) or (
            upload.state is S.OPEN and upload.expires_ms <= now_ms()
        ):
            raise errors.TUS_UPLOAD_GONE.error(
                f"It is {upload.state.value if upload.state is not S.OPEN else 'expired'}."
            )
        if upload.state is S.FAILED:
            raise machine.replay(upload.error)
        if upload.concat == "partial" and upload.state is S.COMPLETED:
            raise errors.TUS_UPLOAD_GONE.error("It was joined into a final upload.")

    # ---- PATCH -----------------------------------------------------------------------------

    async def append(
        self,
        upload_id: str,
        offset: int,
        length: int | None,
        checksum: Checksum | None,
        body: AsyncIterator[bytes],
        content_length: int | None = None,
        *,
        internal: bool = False,
        visible: Callable[[UploadRecord], None] | None = None,
    ) -> Written:
        """``visible`` raises for an upload its caller may not see; it is checked on the record
        the take read, so the caller reads nothing first."""
        # The write that takes the upload reads it too: a PATCH that makes no part costs two
        # round trips to MongoDB, this one and its last write. Only a refused one reads again,
        # to say why.
        lease = self._records.lease(upload_id, self._lease_ms)
        taken = await self._tus.take(upload_id, offset, lease, now_ms())
        if taken is None:
            current = await self.get(upload_id)
            if visible is not None:
                visible(current)
            self._check_writable(current, internal)
            self._size_after(current, length)
            if current.offset != offset:
                raise self._offset_mismatch(current)
            raise errors.TUS_UPLOAD_LOCKED.error(
                "Another request is sending bytes to this upload; ask its offset (HEAD) and "
                "send again.",
                retry_after=1,
            )
        try:
            if visible is not None:
                visible(taken)
            self._check_writable(taken, internal)
            size = self._size_after(taken, length)
            if size is not None and content_length is not None and offset + content_length > size:
                raise errors.TUS_SIZE_EXCEEDED.error(
                    f"{content_length} bytes at offset {offset} go past the length {size}."
                )
            async with lease:
                kept = await self._write(taken, lease, size, checksum, body, content_length)
        except BaseException:
            # A refused PATCH (checksum, length, the client gone) leaves the upload to the next
            # one at once, not after the lease runs out. What it recorded stays recorded.
            await self._tus.release(lease)
            raise
        if kept.state is S.OPEN and kept.size and kept.offset == kept.size:
            return await self.finish(kept)
        return Written(kept)

    def _check_writable(self, upload: UploadRecord, internal: bool) -> None:
        if upload.concat == "final" and not internal:
            raise errors.TUS_FINAL_TAKES_NO_BYTES.error(
                "A final upload is made of its partial uploads."
            )
        if upload.state is S.OPEN and upload.assembled:
            raise self._offset_mismatch(upload)
        machine.ensure_open(upload, now_ms())

    def _size_after(self, upload: UploadRecord, length: int | None) -> int | None:
        """The upload's length once this PATCH is applied: a deferred one may be said now."""
        if not upload.length_deferred:
            if length is not None and length != upload.size:
                raise errors.TUS_INVALID_HEADER.error(
                    f"The upload's length is {upload.size} already.",
                    errors=[FieldError("Upload-Length", "already set", "invalid_header")],
                )
            return upload.size
        if length is None:
            return None
        if length < max(upload.offset, 1):
            raise errors.TUS_INVALID_HEADER.error(
                f"{upload.offset} bytes arrived already.",
                errors=[FieldError("Upload-Length", "below the offset", "invalid_header")],
            )
        declared = None if upload.mime_type == UNTYPED else upload.mime_type
        self._rules.check_size(declared, length, "Upload-Length")
        return length

    def _offset_mismatch(self, upload: UploadRecord) -> ServiceError:
        return errors.TUS_OFFSET_MISMATCH.error(
            f"The upload is at offset {upload.offset}; ask it with HEAD and send from there.",
            extra={"offset": upload.offset},
        )

    async def _write(
        self,
        upload: UploadRecord,
        lease: Lease,
        size: int | None,
        checksum: Checksum | None,
        body: AsyncIterator[bytes],
        content_length: int | None,
    ) -> UploadRecord:
        part_size = upload.chunk_size
        pending = _Pending()  # this PATCH's bytes not yet in a part
        old_pieces = list(upload.piece_keys)  # the tail this PATCH found, in order
        carried = upload.tail_size  # its bytes, until a part takes them up
        consumed = False  # the old pieces' bytes went into a part (or a merged piece)
        dropped = False  # and the old pieces were deleted
        start = upload.offset  # where this PATCH's bytes begin
        next_part = upload.next_part
        recorded_head = head = upload.head or b""
        hasher = checksum.hasher() if checksum is not None else None
        parts: dict[str, StoredChunk] = {}
        received = 0
        # Recorded as each part lands, unless the whole body must match a checksum first.
        durable = hasher is None

        async def drop_old() -> None:
            nonlocal dropped
            if consumed and old_pieces and not dropped:
                dropped = True
                await self._store.delete_many(old_pieces)
                self._pieces.drop(old_pieces)

        async def tail_bytes() -> list[bytes]:
            nonlocal carried, consumed
            chunks = await self._tail_bytes(upload.id, old_pieces, carried) if carried else []
            carried, consumed = 0, True
            return chunks

        async def put_part(count: int) -> None:
            """Part ``next_part + 1``: the tail's bytes, then ``count`` of this PATCH's."""
            nonlocal next_part, recorded_head
            data = PartBody()
            for chunk in await tail_bytes():
                data.append(chunk)
            for chunk in pending.take(count):
                data.append(chunk)
            stored = await self._store.upload_part(
                upload.key, upload.s3_upload_id, next_part + 1, data
            )
            parts[str(next_part)] = StoredChunk(etag=stored.etag, size=stored.size, at_ms=now_ms())
            next_part += 1
            if durable:
                fields: Document = {
                    "offset": start + received - pending.size,
                    "next_part": next_part,
                    f"parts.{next_part - 1}": parts[str(next_part - 1)].model_dump(),
                    "piece_keys": [],
                    "tail_size": 0,
                }
                if head != recorded_head:
                    fields["head"] = recorded_head = head
                if not await self._tus.progress(lease, fields):
                    raise self._lost()
                await drop_old()

        try:
            async for piece in body:
                if size is not None and start + received + len(piece) > size:
                    raise errors.TUS_SIZE_EXCEEDED.error(
                        f"The bytes go past the upload's length {size}."
                    )
                if hasher is not None:
                    hasher.update(piece)
                if len(head) < sniff.SNIFF_BYTES:
                    head += bytes(piece[: sniff.SNIFF_BYTES - len(head)])
                pending.append(bytes(piece))
                received += len(piece)
                while carried + pending.size >= part_size:
                    await put_part(part_size - carried)
        except DISCONNECTED:
            if hasher is not None:
                raise
        if content_length is not None and received < content_length and hasher is not None:
            raise errors.CHUNK_ENDED_EARLY.error("The body ended early; nothing was kept.")
        if hasher is not None and checksum is not None and hasher.digest() != checksum.digest:
            raise errors.TUS_CHECKSUM_MISMATCH.error(
                f"The {checksum.algorithm} of the body differs from Upload-Checksum; nothing "
                "of it was kept, send it again.",
                errors=[FieldError("Upload-Checksum", "mismatch", "checksum_mismatch")],
            )
        offset = start + received
        finished = size is not None and offset == size
        new_piece: str | None = None
        if finished and carried + pending.size:
            await put_part(pending.size)
        elif pending.size:
            # The rest waits in a new piece of its own; a tail of too many pieces becomes one.
            merge = not consumed and len(old_pieces) >= MAX_PIECES
            chunks = [*(await tail_bytes()), *pending.take_all()] if merge else pending.take_all()
            piece_size = sum(len(c) for c in chunks)
            new_piece = records.piece_key(upload.event_id, upload.photo_id, new_id("piece"))
            data = PartBody()
            for chunk in chunks:
                data.append(chunk)
            await self._store.put_bytes(new_piece, data, "application/octet-stream")
            self._pieces.put(new_piece, chunks, piece_size)
            carried += piece_size
        pieces = ([] if consumed else old_pieces) + ([new_piece] if new_piece else [])
        fields: Document = {
            "offset": offset,
            "next_part": next_part,
            "piece_keys": pieces,
            "tail_size": carried,
            **{f"parts.{i}": p.model_dump() for i, p in parts.items()},
        }
        if head != recorded_head:
            fields["head"] = head
        if size is not None and upload.length_deferred:
            fields |= {"size": size, "length_deferred": False}
        if finished:
            fields["chunk_count"] = next_part
        if not await self._tus.progress(lease, fields, release=True):
            if new_piece is not None:
                await self._store.delete_many([new_piece])
                self._pieces.drop([new_piece])
            raise self._lost()
        await drop_old()
        return upload.model_copy(
            update={
                "offset": offset,
                "next_part": next_part,
                "piece_keys": pieces,
                "tail_size": carried,
                "size": size if size is not None else upload.size,
                "length_deferred": size is None,
                "chunk_count": next_part if finished else upload.chunk_count,
                "head": head or None,
            }
        )

    async def _tail_bytes(self, upload_id: str, keys: list[str], size: int) -> list[bytes]:
        """The bytes of the pieces ``keys``, in order: from the cache, else from S3."""
        found: dict[str, list[bytes]] = {}
        missing: list[str] = []
        for key in keys:
            cached = self._pieces.get(key)
            if cached is None:
                missing.append(key)
            else:
                found[key] = cached
        for start in range(0, len(missing), PIECE_READS):
            batch = missing[start : start + PIECE_READS]
            read = await asyncio.gather(*(self._store.get_bytes(key) for key in batch))
            found.update((key, [data]) for key, data in zip(batch, read, strict=True))
        chunks = [chunk for key in keys for chunk in found[key]]
        held = sum(len(c) for c in chunks)
        if held != size:
            raise StorageError(
                f"upload {upload_id}: its pieces hold {held} bytes, its record says {size}"
            )
        return chunks

    def _lost(self) -> ServiceError:
        return errors.TUS_UPLOAD_LOCKED.error(
            "Another request took this upload over; ask its offset (HEAD) and send again.",
            retry_after=1,
        )

    async def finish(self, upload: UploadRecord) -> Written:
        """The last byte arrived: a partial upload becomes one object; any other, its photo."""
        if upload.concat == "partial":
            parts = await self._records.get(upload.id)
            await self._chunked.parts.assemble(parts)
            await self._records.col.update_one(
                {"_id": upload.id, "state": S.OPEN.value}, {"$set": {"assembled": True}}
            )
            return Written(upload.model_copy(update={"assembled": True}))
        photo = await self._chunked.complete(upload.id)
        return Written(await self.get(upload.id), photo)

    def needs_finish(self, upload: UploadRecord) -> bool:
        """Every byte is there, but the PATCH that brought the last one died before the photo
        (or a partial's object) was made."""
        return (
            upload.state is S.OPEN
            and not upload.length_deferred
            and upload.offset == upload.size > 0
            and not upload.assembled
            and upload.concat != "final"
        ) or (upload.state is S.COMPLETING)

    async def event_of(self, upload_id: str) -> str:
        return (await self.get(upload_id)).event_id

    # ---- termination -----------------------------------------------------------------------

    async def terminate(self, upload_id: str) -> None:
        upload = await self.get(upload_id)
        if upload.state is S.COMPLETED and upload.concat != "partial":
            raise machine.cancel_refusal(upload.state) or errors.NO_LONGER_OPEN.error()
        # The cancel drops the parts and every piece the record names.
        await self._chunked.cancel(upload_id)
        self._pieces.drop(upload.piece_keys)

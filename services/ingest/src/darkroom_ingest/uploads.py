"""Batch uploads: multipart/form-data streamed part by part to S3.

Each file is sniffed by its first bytes, hashed (SHA-256) and size-checked while it streams; the
request body is never held whole. Files that fail a check are skipped with a reason and the rest of
the batch is kept. Records are written only after every file is stored, and objects of a batch that
is refused as a whole (cap, size, broken request) are deleted, so nothing half-done stays behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, hdrs
from aiohttp.http_exceptions import BadHttpMessage
from darkroom_kit import records
from darkroom_kit.errors import ServiceError
from darkroom_kit.ids import new_id
from darkroom_kit.problems import FieldError
from darkroom_kit.storage import ObjectInfo, S3ObjectStore, StorageError, StreamingWriter
from prometheus_client import Counter

from darkroom_ingest import errors, filenames, sniff
from darkroom_ingest.multipart import PartTolerantReader, holds_control_characters
from darkroom_ingest.settings import IngestSettings

log = logging.getLogger(__name__)

# Files whose upload to S3 may still be finishing while the next one streams in.
MAX_FINISHING = 1

FILE_FIELDS = {"photos", "photos[]", "file", "files"}
# Parts a batch request may hold besides its files (category_id, a few unknown fields).
EXTRA_PARTS = 16


@dataclass(frozen=True, slots=True)
class Skipped:
    filename: str | None
    field: str
    code: str
    detail: str

    def as_dict(self) -> dict[str, str | None]:
        return {
            "filename": self.filename,
            "field": self.field,
            "code": self.code,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class StoredFile:
    photo_id: str
    key: str
    filename: str
    original_filename: str
    kind: sniff.FileType
    size: int
    sha256: str | None  # None: a chunked upload sent without one
    hidden: bool = False  # arrived through a guest link of an event that hides those
    # An imported object's identity (source, key, ETag, size), so a rerun imports it once.
    import_ref: str | None = None


@dataclass
class ReceivedBatch:
    stored: list[StoredFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    category_id: str | None = None


async def object_sha256(store: S3ObjectStore, key: str) -> str:
    """An object's SHA-256, read back (S3 keeps no digest of a multipart object)."""
    digest = hashlib.sha256()
    async with store.open_stream(key) as (_, chunks):
        async for chunk in chunks:
            digest.update(chunk)
    return digest.hexdigest()


def batch_too_large(limit: int) -> ServiceError:
    return errors.BODY_TOO_LARGE.error(
        f"One batch request may carry at most {limit} bytes; split it, or use chunked "
        "uploads for big files.",
    )


class BatchReceiver:
    def __init__(
        self, store: S3ObjectStore, settings: IngestSettings, event_id: str, bytes_counter: Counter
    ) -> None:
        self._store = store
        self._settings = settings
        self._event_id = event_id
        self._bytes = bytes_counter
        self._allowed = set(settings.allowed_types)
        self._total = 0
        self._finishing: list[tuple[StreamingWriter, asyncio.Task[ObjectInfo]]] = []

    async def receive(self, reader: MultipartReader) -> ReceivedBatch:
        # A control character in one part's headers fails that part (``invalid_filename``), not
        # the whole request as aiohttp's own reader does.
        reader = PartTolerantReader.adopt(reader)
        batch = ReceivedBatch()
        files_seen = 0
        parts_seen = 0
        # Every part costs an entry in the answer and a turn of this loop, whatever it holds:
        # bounded as a whole, so a body of a million empty parts is refused, not listed.
        max_parts = self._settings.max_batch_files + EXTRA_PARTS
        try:
            while True:
                part = await self._next_part(reader, f"photos[{files_seen}]")
                if part is None:
                    break
                parts_seen += 1
                if parts_seen > max_parts:
                    raise errors.TOO_MANY_PARTS.error(
                        f"A batch request holds at most {max_parts} parts "
                        f"({self._settings.max_batch_files} files); nothing of it was kept.",
                        errors=[FieldError("photos", f"at most {max_parts} parts", "too_many")],
                    )
                if not isinstance(part, BodyPartReader):
                    raise errors.NESTED_MULTIPART.error(
                        errors=[FieldError("photos", "send each file as its own part")]
                    )
                name = part.name or ""
                if name == "category_id" and part.filename is None:
                    batch.category_id = (await part.text()).strip() or None
                    continue
                if name not in FILE_FIELDS:
                    await self._drain(part)  # its bytes count towards the batch's cap
                    if holds_control_characters(part.headers.get(hdrs.CONTENT_DISPOSITION)):
                        # Not even parsed (a control character outside quotes): no name at all.
                        skipped = Skipped(
                            part.filename,
                            name or "(unnamed)",
                            "invalid_filename",
                            "The part's Content-Disposition holds control characters.",
                        )
                    else:
                        skipped = Skipped(
                            part.filename,
                            name or "(unnamed)",
                            "unknown_field",
                            "Send files in the 'photos' field.",
                        )
                    batch.skipped.append(skipped)
                    continue
                where = f"photos[{files_seen}]"
                files_seen += 1
                if files_seen > self._settings.max_batch_files:
                    await self._drain(part)
                    batch.skipped.append(
                        Skipped(
                            part.filename,
                            where,
                            "too_many_files",
                            f"A batch holds at most {self._settings.max_batch_files} files.",
                        )
                    )
                    continue
                result = await self._receive_file(part, where)
                if isinstance(result, Skipped):
                    batch.skipped.append(result)
                else:
                    batch.stored.append(result)
            await self._await_finishing()
        except BaseException:
            await self._abort_finishing()
            await self.discard(batch.stored)
            raise
        return batch

    @staticmethod
    async def _next_part(reader: MultipartReader, where: str) -> Any:
        try:
            return await reader.next()
        except BadHttpMessage as exc:
            # A part's header that is not a header at all (no colon, a bad name, a raw line
            # break inside a value): past it the body's framing cannot be trusted.
            detail = exc.message or type(exc).__name__
            raise errors.MALFORMED_MULTIPART.error(
                f"The headers of the part after the last one read are broken ({detail[:200]}). "
                "Nothing of this request was kept.",
                errors=[FieldError(where, detail[:200], "invalid_part_header")],
            ) from None
        except (ValueError, AssertionError) as exc:
            # Broken framing: the request is malformed, not the server.
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise errors.MALFORMED_MULTIPART.error(
                f"{detail[:200]}. Nothing of this request was kept."
            ) from None

    async def discard(self, stored: list[StoredFile]) -> None:
        with contextlib.suppress(StorageError):
            await self._store.delete_many([f.key for f in stored])

    async def _receive_file(self, part: BodyPartReader, where: str) -> StoredFile | Skipped:
        raw_name = part.filename
        try:
            name = filenames.validate_filename(raw_name)
        except filenames.InvalidFilename as exc:
            await self._drain(part)
            return Skipped(raw_name, where, "invalid_filename", str(exc))
        chunk_size = self._settings.read_chunk_bytes
        head = b""
        while len(head) < sniff.SNIFF_BYTES:
            chunk = await part.read_chunk(chunk_size)
            if not chunk:
                break
            head += chunk
            self._count(len(chunk))
        if not head:
            return Skipped(name, where, "empty_file", "The file is empty.")
        kind = sniff.sniff(head)
        if kind is not None and kind.content_type.startswith("video/"):
            await self._drain(part)
            return Skipped(
                name,
                where,
                "use_chunked_upload",
                "Videos go through chunked uploads: POST /v1/events/{id}/uploads.",
            )
        if kind is None or kind.name not in self._allowed:
            await self._drain(part)
            what = "an unrecognised format" if kind is None else kind.name.upper()
            return Skipped(
                name,
                where,
                "unsupported_type",
                f"The content is {what}; allowed: {', '.join(sorted(self._allowed))}.",
            )
        photo_id = new_id("ph")
        key = records.original_key(self._event_id, photo_id)
        writer = self._store.writer(key, kind.content_type, self._settings.upload_part_bytes)
        digest = hashlib.sha256()
        tail = b""
        max_bytes = self._settings.max_file_bytes
        try:
            chunk = head
            while chunk:
                if writer.size + len(chunk) > max_bytes:
                    await writer.abort()
                    await self._drain(part)
                    return Skipped(
                        name,
                        where,
                        "file_too_large",
                        f"Files are limited to {max_bytes} bytes in a batch; use "
                        "a chunked upload for bigger ones.",
                    )
                digest.update(chunk)
                tail = (
                    (tail + chunk)[-sniff.TAIL_BYTES :]
                    if len(chunk) < sniff.TAIL_BYTES
                    else chunk[-sniff.TAIL_BYTES :]
                )
                await writer.write(chunk)
                chunk = await part.read_chunk(chunk_size)
                self._count(len(chunk))
            if not sniff.is_complete(kind, head, tail, writer.size):
                await writer.abort()
                return Skipped(
                    name,
                    where,
                    "truncated_file",
                    f"The {kind.name.upper()} data ends early: the file is incomplete.",
                )
        except BaseException:
            await writer.abort()
            raise
        await self._finish_in_background(writer)
        return StoredFile(
            photo_id,
            key,
            filenames.with_extension(name, kind.extension),
            name,
            kind,
            writer.size,
            digest.hexdigest(),
        )

    async def _finish_in_background(self, writer: StreamingWriter) -> None:
        """Complete the object while the next file streams in: the last part and the
        CompleteMultipartUpload round trip no longer stall the request. At most
        ``MAX_FINISHING`` files finish at once, which bounds memory."""
        self._finishing.append((writer, asyncio.create_task(writer.close())))
        while len(self._finishing) > MAX_FINISHING:
            _, oldest = self._finishing[0]
            await oldest
            self._finishing.pop(0)

    async def _await_finishing(self) -> None:
        while self._finishing:
            _, task = self._finishing[0]
            await task
            self._finishing.pop(0)

    async def _abort_finishing(self) -> None:
        for writer, task in self._finishing:
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task
            if task.cancelled() or task.exception() is not None:
                with contextlib.suppress(StorageError):
                    await writer.abort()
        self._finishing.clear()

    def _count(self, n: int) -> None:
        self._total += n
        self._bytes.inc(n)
        if self._total > self._settings.max_batch_bytes:
            raise batch_too_large(self._settings.max_batch_bytes)

    async def _drain(self, part: BodyPartReader) -> None:
        while chunk := await part.read_chunk(self._settings.read_chunk_bytes):
            self._count(len(chunk))

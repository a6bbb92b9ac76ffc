"""The chunked upload record (collection ``uploads``; upload-ingest writes it, its orphan sweep
reads the key of the live ones)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from darkroom_kit.statuses import UploadState
from darkroom_kit.stored._base import Record


class StoredChunk(BaseModel):
    """A chunk that arrived: S3 multipart part ``index + 1``."""

    model_config = ConfigDict(extra="ignore")

    etag: str
    size: int
    crc32c: str | None = None  # base64 of the big-endian CRC32C, as the API shows it
    sha256: str | None = None  # base64, only when the client sent one to check
    at_ms: int | None = None


class UploadFailure(BaseModel):
    """Why a complete failed, kept so that every later complete answers the same. The defaults
    stand for a record whose error was written without one of them."""

    model_config = ConfigDict(extra="ignore")

    status: int = 409
    code: str = "upload_failed"
    detail: str = ""


# "direct": the client sends the bytes straight to S3 with URLs the API signed (one PUT, or the
# parts of a multipart upload); ``chunk_size`` and ``chunk_count`` are 0, ``parts`` stays empty.
UploadProtocol = Literal["chunked", "tus", "direct"]
# A tus upload's part in a concatenation (the tus concatenation extension).
Concat = Literal["partial", "final"]


class UploadRecord(Record):
    protocol: UploadProtocol = "chunked"
    event_id: str
    event_slug: str
    photo_id: str  # chosen at creation: the object key names it before the photo exists
    # The photo already in the event that its file turned out to equal (no photo of its own).
    duplicate_of: str | None = None
    # Asked at creation: store it even if it equals a photo there (None: the event's setting).
    keep_duplicates: bool | None = None
    key: str
    s3_upload_id: str  # "" for a direct upload sent as one PUT
    filename: str
    size: int
    mime_type: str
    sha256: str | None = None  # hex of the whole file, checked at completion
    chunk_size: int
    chunk_count: int
    state: UploadState
    # By the chunk's index as a string (a MongoDB field name), so each chunk is its own
    # ``$set`` and chunks may arrive in parallel. Left out of the reads of a chunk PUT.
    parts: dict[str, StoredChunk] = Field(default_factory=dict)
    # The first bytes of chunk 0, sniffed at completion; removed once completed.
    head: bytes | None = None
    created_ms: int
    expires_ms: int
    completing_ms: int | None = None
    completed_ms: int | None = None
    error: UploadFailure | None = None
    # ---- tus: bytes arrive in order, at ``offset``, in pieces of any size ----
    # The bytes kept: ``next_part`` parts of ``chunk_size`` (the S3 parts 1..next_part), then
    # the tail: ``tail_size`` bytes (under a part, so they wait for the next PATCHes) in the
    # piece objects ``piece_keys``, in order, each the rest of one PATCH.
    offset: int = 0
    next_part: int = 0
    tail_size: int = 0
    piece_keys: list[str] = Field(default_factory=list)
    length_deferred: bool = False  # ``size`` is 0 until a PATCH says it
    concat: Concat | None = None
    partials: list[str] = Field(default_factory=list)  # a final's partial uploads, in order
    assembled: bool = False  # a partial whose bytes are one object at ``key``
    metadata: dict[str, str] = Field(default_factory=dict)  # Upload-Metadata, as sent
    # The token that made it: a partial upload sent before its event is known (tus-js-client
    # names the event only on the final upload) is its maker's alone.
    token_id: str | None = None
    # Sent through a guest link of an event that hides those photos: its photo arrives hidden.
    hidden: bool = False

    def chunk(self, index: int) -> StoredChunk | None:
        return self.parts.get(str(index))

    def received(self) -> list[tuple[int, StoredChunk]]:
        """The chunks that arrived, by index."""
        return sorted(((int(i), p) for i, p in self.parts.items()), key=lambda item: item[0])

    def missing(self) -> list[int]:
        return [i for i in range(self.chunk_count) if str(i) not in self.parts]

    @property
    def received_bytes(self) -> int:
        return sum(p.size for p in self.parts.values())

"""The chunked upload's state machine: its states, the moves between them, and the rules every
request is checked against. No IO and no protocol: a caller reads the record, asks here what
may happen, and makes the move with a write conditional on the state it read (store.py), so of
two processes racing for one move only one makes it. The chunk API drives it today; a tus
handler can drive the same machine (its PATCH is a chunk, its final length a complete).

    open ──complete──▶ completing ──▶ completed
      │                  │  ▲  │
      │                  │  └──┘ taken over (its holder died)
      │                  ├──▶ failed (the content or the event refused the photo)
      │                  └──▶ open (the object store failed: complete again)
      ├──cancel──▶ aborted
      └──expiry──▶ expired
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from darkroom_kit.errors import ErrorKind, ServiceError
from darkroom_kit.problems import FieldError
from darkroom_kit.statuses import UploadState
from darkroom_kit.stored.uploads import UploadFailure, UploadRecord

from darkroom_ingest import errors, filenames, sniff
from darkroom_ingest.chunked.digests import Digests
from darkroom_ingest.settings import IngestSettings

S = UploadState

MAX_PARTS = 10_000  # S3's limit
# A complete holds the upload by a lease its process renews while it works (lock_lease_seconds),
# so a complete whose process died is taken over within seconds. A record written before leases
# existed carries only ``completing_ms``: its process (the previous version) does not renew, so it
# keeps the old rule: taken over once this old.
STALE_COMPLETING_MS = 5 * 60 * 1000
# A complete whose lease ran out this long ago, and that no client asked for again, is finished
# by the sweep (a client's own retry normally comes much sooner).
ABANDONED_COMPLETE_MS = 60_000

TRANSITIONS: Mapping[UploadState, frozenset[UploadState]] = {
    S.OPEN: frozenset({S.COMPLETING, S.ABORTED, S.EXPIRED}),
    S.COMPLETING: frozenset({S.COMPLETING, S.COMPLETED, S.FAILED, S.OPEN}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.ABORTED: frozenset(),
    S.EXPIRED: frozenset(),
}


def can_move(source: UploadState, target: UploadState) -> bool:
    return target in TRANSITIONS[source]


def sources(target: UploadState) -> list[UploadState]:
    """The states a move to ``target`` may start from: the condition of its write."""
    return [s for s in UploadState if target in TRANSITIONS[s]]


# ---- creation -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    chunk_size: int
    chunk_count: int


@dataclass(frozen=True, slots=True)
class Rules:
    """What an upload may be: the settings the machine reads, read once."""

    accepted_types: frozenset[str]  # sniff.FileType names
    max_image_bytes: int
    max_video_bytes: int
    chunk_bytes: int
    expiry_ms: int

    @classmethod
    def of(cls, settings: IngestSettings) -> Rules:
        return cls(
            # Chunked uploads take every accepted image type and the videos.
            frozenset(settings.allowed_types) | frozenset(settings.allowed_video_types),
            settings.max_chunked_image_bytes,
            settings.max_video_bytes,
            settings.upload_chunk_bytes,
            int(settings.upload_expiry_seconds * 1000),
        )

    def name_of(self, filename: str) -> str:
        """The file's name as it is kept, or why it is not."""
        try:
            return filenames.validate_filename(filename)
        except filenames.InvalidFilename as exc:
            raise errors.INVALID_FILENAME.error(
                str(exc), errors=[FieldError("/filename", str(exc), "invalid_filename")]
            ) from None

    def admit(self, filename: str, size: int, mime_type: str) -> str:
        """The file's name as it is kept, or why such a file is not taken."""
        name = self.name_of(filename)
        declared = sniff.BY_CONTENT_TYPE.get(mime_type)
        if declared is None or declared.name not in self.accepted_types:
            allowed = sorted(t.content_type for t in sniff.ALL_TYPES if self.accepts(t))
            raise errors.UNSUPPORTED_TYPE.error(
                "Allowed: " + ", ".join(allowed),
                errors=[FieldError("/mime_type", "not an accepted type", "unsupported_type")],
            )
        self.check_size(mime_type, size)
        return name

    def limit(self, mime_type: str) -> int:
        return self.max_video_bytes if mime_type.startswith("video/") else self.max_image_bytes

    @property
    def max_size(self) -> int:
        return max(self.max_video_bytes, self.max_image_bytes)

    def check_size(self, mime_type: str | None, size: int, field: str = "/size") -> None:
        """``size`` within the limit of ``mime_type``; of the largest type when None (not known
        yet: the real type's applies once the bytes are there)."""
        limit = self.max_size if mime_type is None else self.limit(mime_type)
        if size > limit:
            raise errors.FILE_TOO_LARGE.error(
                f"{mime_type} files are limited to {limit} bytes."
                if mime_type
                else f"Files are limited to {limit} bytes.",
                errors=[FieldError(field, f"at most {limit}", "file_too_large")],
            )

    def accepts(self, kind: sniff.FileType | None) -> bool:
        return kind is not None and kind.name in self.accepted_types

    def layout(self, size: int) -> Layout:
        """The configured chunk size, or larger where the file would need more than S3's
        10,000 parts."""
        chunk_size = self.chunk_bytes
        chunk_count = max(1, -(-size // chunk_size))
        if chunk_count > MAX_PARTS:
            chunk_size = -(-size // MAX_PARTS)
            chunk_count = -(-size // chunk_size)
        return Layout(chunk_size, chunk_count)

    def content(self, head: bytes, size: int) -> sniff.FileType:
        """The file's type by its first bytes, checked once it is whole: what was declared at
        creation is only the client's word, so the limit of the real type applies."""
        kind = sniff.sniff(head)
        if kind is None or not self.accepts(kind):
            raise errors.UNSUPPORTED_CONTENT.error(
                "The file's bytes are not an accepted image or video format."
            )
        self.check_size(kind.content_type, size)
        return kind


# ---- chunks -------------------------------------------------------------------------------------

_NOT_OPEN = {
    S.COMPLETING: errors.NOT_OPEN_COMPLETING,
    S.COMPLETED: errors.NOT_OPEN_COMPLETED,
    S.FAILED: errors.NOT_OPEN_FAILED,
    S.ABORTED: errors.NOT_OPEN_ABORTED,
    S.EXPIRED: errors.NOT_OPEN_EXPIRED,
}


def ensure_open(upload: UploadRecord, now: int) -> None:
    """Chunks are taken only while the upload is open and not past its expiry (the sweep that
    marks it expired may not have come by yet)."""
    if upload.state is S.OPEN:
        if upload.expires_ms <= now:
            raise errors.UPLOAD_EXPIRED.error(
                "Start a new upload; chunks are kept for a limited time."
            )
        return
    raise _not_open(upload.state)


def _tus_only() -> ServiceError:
    return errors.WRONG_PROTOCOL.error(
        "Its bytes are sent with tus PATCH requests, and it completes with its last byte."
    )


def _not_open(state: UploadState) -> ServiceError:
    return _NOT_OPEN[state].error(
        "Chunks can be sent only while the upload is open.", extra={"state": state.value}
    )


def expected_size(upload: UploadRecord, index: int) -> int:
    count, chunk_size = upload.chunk_count, upload.chunk_size
    if not 0 <= index < count:
        raise errors.CHUNK_OUT_OF_RANGE.error(f"Chunks are numbered 0 to {count - 1}.")
    return chunk_size if index < count - 1 else upload.size - chunk_size * (count - 1)


def check_chunk(upload: UploadRecord, index: int, length: int | None, now: int) -> int:
    """Whether chunk ``index`` of ``length`` bytes may be sent now; its size, which its body
    must then have."""
    ensure_open(upload, now)
    if upload.protocol == "tus":
        raise _tus_only()
    if upload.protocol == "direct":
        raise errors.DIRECT_ONLY.error("Its bytes are sent to S3 with the URLs the API signed.")
    expected = expected_size(upload, index)
    if length is None:
        raise errors.LENGTH_REQUIRED.error(f"Chunk {index} must be exactly {expected} bytes.")
    if length != expected:
        raise errors.WRONG_CHUNK_SIZE.error(
            f"Chunk {index} must be exactly {expected} bytes, not {length}.",
            extra={"expected_size": expected},
        )
    return expected


def check_body(index: int, expected: int, received: int, sent: Digests, got: Digests) -> None:
    """A chunk's body as it arrived: whole, and with the checksums its client sent."""
    if received != expected:
        raise errors.CHUNK_ENDED_EARLY.error(
            f"Received {received} of {expected} bytes; send it again."
        )
    if sent.crc32c is not None and sent.crc32c != got.crc32c:
        raise _chunk_mismatch("crc32c", index)
    if sent.sha256 is not None and sent.sha256 != got.sha256:
        raise _chunk_mismatch("sha-256", index)


def _chunk_mismatch(algorithm: str, index: int) -> ServiceError:
    return errors.CHUNK_CHECKSUM_MISMATCH.error(
        f"The {algorithm} of chunk {index} differs from the one sent; nothing was "
        "kept, send the chunk again.",
        errors=[FieldError("Content-Digest", f"{algorithm} mismatch", "checksum_mismatch")],
    )


def closed_while_sending() -> ServiceError:
    """The chunk was stored, but the upload left ``open`` meanwhile: the chunk counts for
    nothing."""
    return errors.NO_LONGER_OPEN.error(
        "It was completed, cancelled or expired while this chunk arrived."
    )


# ---- completion ---------------------------------------------------------------------------------


class Completion(Enum):
    DONE = "done"  # the photo exists: answer it
    CLAIM = "claim"  # make it: claim the upload (open, or completing under a lease run out)


def completion(upload: UploadRecord, now: int) -> Completion:
    """What a complete of the upload in its present state does, or why it is refused."""
    match upload.state:
        case S.COMPLETED:
            return Completion.DONE
        case S.FAILED:
            raise replay(upload.error)
        case S.ABORTED | S.EXPIRED:
            raise _not_open(upload.state)
        case S.OPEN:
            if upload.protocol == "tus" and (
                upload.concat == "partial" or upload.length_deferred or upload.offset < upload.size
            ):
                raise _tus_only()
            missing = upload.missing()
            if missing:
                raise errors.MISSING_CHUNKS.error(
                    f"{len(missing)} chunk(s) missing; send them, then complete again.",
                    extra={"missing": missing[:1000]},
                )
            ensure_open(upload, now)
    return Completion.CLAIM


def failure_of(error: ServiceError) -> UploadFailure:
    """What is kept of the error that failed a complete."""
    return UploadFailure(
        status=error.kind.status, code=error.code, detail=error.detail or error.kind.title
    )


def replay(failure: UploadFailure | None) -> ServiceError:
    """The answer of every complete after one failed: the same code and status."""
    failure = failure or UploadFailure()
    kind = errors.UPLOAD_FAILED
    if (failure.code, failure.status) != (kind.code, kind.status):
        kind = ErrorKind(failure.code, failure.status, kind.title)
    return kind.error(failure.detail)


# ---- cancel -------------------------------------------------------------------------------------


def cancel_refusal(state: UploadState) -> ServiceError | None:
    """Why an upload in ``state`` (read after the cancelling write found it not open) cannot be
    cancelled; None for one cancelled already, since a repeated cancel is answered as the first."""
    if state is S.ABORTED:
        return None
    kind = _NOT_OPEN.get(state, errors.NO_LONGER_OPEN)
    return kind.error("Only an open upload can be cancelled.")

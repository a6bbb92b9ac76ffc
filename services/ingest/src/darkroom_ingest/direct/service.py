"""The direct upload use cases: tickets (upload records with the URLs a client may use), the
parts S3 holds, completion through the chunked uploads' exactly-once path, and cancel."""

from __future__ import annotations

from dataclasses import dataclass

from darkroom_kit.clock import now_ms
from darkroom_kit.mongo import Document
from darkroom_kit.problems import FieldError
from darkroom_kit.statuses import UploadState
from darkroom_kit.storage import ObjectNotFound, PresignedRequest, StoredPart
from darkroom_kit.stored.events import EventRecord
from darkroom_kit.stored.uploads import UploadRecord

from darkroom_ingest import errors
from darkroom_ingest.chunked import ChunkedUploads, machine
from darkroom_ingest.direct.objects import claimed_parts
from darkroom_ingest.photos import ensure_accepts_uploads
from darkroom_ingest.settings import IngestSettings

S = UploadState


@dataclass(frozen=True, slots=True)
class Ticket:
    """A direct upload as created: its record, and for a single PUT the request to make."""

    upload: UploadRecord
    put: PresignedRequest | None
    # When the signed URL stops working (a multipart upload: when the upload expires; each
    # part's URL has its own).
    url_expires_ms: int


@dataclass(frozen=True, slots=True)
class PartTicket:
    number: int
    request: PresignedRequest
    expires_ms: int


class DirectUploads:
    def __init__(self, chunked: ChunkedUploads, settings: IngestSettings) -> None:
        self._chunked = chunked
        self._objects = chunked.direct
        self._rules = chunked.rules
        self._put_max = settings.direct_put_max_bytes
        self._ticket_s = settings.direct_ticket_seconds

    # ---- create and read -------------------------------------------------------------------

    async def create(
        self,
        event: EventRecord,
        filename: str,
        size: int,
        mime_type: str,
        sha256: str | None,
        *,
        multipart: bool,
        keep_duplicates: bool | None = None,
    ) -> Ticket:
        name = self._rules.admit(filename, size, mime_type)
        if not multipart and size > self._put_max:
            raise errors.DIRECT_PUT_TOO_LARGE.error(
                f"One signed PUT takes at most {self._put_max} bytes; send it multipart.",
                errors=[FieldError("/multipart", "true for a file this large", "use_multipart")],
            )
        ensure_accepts_uploads(event)
        ticket_ms = self._ticket_s * 1000
        # The record before any URL: no byte can land at the key before it is owned. A single
        # PUT may begin as its URL runs out and take as long again; a multipart upload is signed
        # part by part and lives as long as a chunked one.
        upload = await self._chunked.open(
            event,
            name,
            size,
            mime_type,
            sha256,
            layout=machine.Layout(0, 0),
            expires_in_ms=self._rules.expiry_ms if multipart else 2 * ticket_ms,
            protocol="direct",
            multipart=multipart,
            keep_duplicates=keep_duplicates,
        )
        now = now_ms()
        if multipart:
            return Ticket(upload, None, upload.expires_ms)
        return Ticket(upload, self._objects.put_ticket(upload, self._ticket_s), now + ticket_ms)

    async def record(self, upload_id: str) -> UploadRecord:
        """A direct upload; any other kind is not one of these."""
        upload = await self._chunked.records.get(upload_id, with_parts=False)
        if upload.protocol != "direct":
            raise errors.UPLOAD_NOT_FOUND.error(f"No direct upload with id {upload_id!r}.")
        return upload

    # ---- multipart -------------------------------------------------------------------------

    def sign_parts(
        self, upload: UploadRecord, numbers: list[int], crc32c: str | None = None
    ) -> list[PartTicket]:
        """URLs for the parts ``numbers``, valid for the ticket time (never past the upload's
        expiry); with ``crc32c`` (one part), S3 keeps the part only if its bytes have it. The
        upload is checked once, however many parts."""
        _multipart(upload)
        now = now_ms()
        machine.ensure_open(upload, now)
        for number in numbers:
            if not 1 <= number <= machine.MAX_PARTS:
                raise errors.INVALID_PART_NUMBER.error(
                    f"Part {number} is out of range.",
                    errors=[FieldError("part_number", "1 to 10000", "invalid")],
                )
        seconds = max(1, min(self._ticket_s, (upload.expires_ms - now) // 1000))
        return [
            PartTicket(
                n, self._objects.part_ticket(upload, n, seconds, crc32c), now + seconds * 1000
            )
            for n in numbers
        ]

    async def parts(self, upload: UploadRecord) -> list[StoredPart]:
        """The parts S3 holds: how a client resumes."""
        _multipart(upload)
        machine.ensure_open(upload, now_ms())
        return await self._objects.parts(upload)

    # ---- complete and cancel ---------------------------------------------------------------

    async def complete(self, upload: UploadRecord, parts: list[tuple[int, str]] | None) -> Document:
        """The photo, made exactly once from what S3 holds; ``parts`` (a multipart upload's, as
        its client sent them) must be exactly those S3 lists."""
        if upload.state is S.EXPIRED:
            raise errors.UPLOAD_EXPIRED.error("Start a new upload; a ticket is short-lived.")
        if parts is not None:
            _multipart(upload)
        claimed = None if parts is None else claimed_parts(parts)
        try:
            return await self._chunked.complete(upload.id, claimed_parts=claimed)
        except ObjectNotFound:
            raise errors.NOTHING_UPLOADED.error(
                "Send the bytes to the signed URL(s), then complete again."
            ) from None

    async def cancel(self, upload: UploadRecord) -> None:
        """Drop the upload and whatever S3 holds of it."""
        await self._chunked.cancel(upload.id)


def _multipart(upload: UploadRecord) -> None:
    if not upload.s3_upload_id:
        raise errors.NOT_MULTIPART.error("It is sent as one PUT to the URL given at creation.")

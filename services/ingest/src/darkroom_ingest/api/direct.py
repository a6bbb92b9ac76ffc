"""Direct uploads: the bytes go straight to S3 with URLs the API signs (one PUT, or the parts of
a multipart upload in the shape of Uppy's ``@uppy/aws-s3``), then the API completes the file
from what S3 holds."""

from __future__ import annotations

from darkroom_kit.clock import ms_to_iso
from darkroom_kit.problems import FieldError
from darkroom_kit.stored.uploads import UploadRecord

from darkroom_ingest import errors
from darkroom_ingest.api.declare import Call, Reply, RouteTable
from darkroom_ingest.api.uploads import check_visible
from darkroom_ingest.direct.service import PartTicket, Ticket
from darkroom_ingest.errors import EVENT_NOT_FOUND, PHOTO_NOT_FOUND, UPLOAD_NOT_FOUND
from darkroom_ingest.schemas.direct import (
    DirectComplete,
    DirectUploadCreate,
    DirectUploadOut,
    PartBatchSign,
    PartSignQuery,
    PartsOut,
    PartTicketList,
    PartTicketOut,
    S3Part,
)
from darkroom_ingest.schemas.photos import UploadedPhoto
from darkroom_ingest.tokens import Scope

routes = RouteTable("direct-uploads")

# Signed URLs are credentials for a while: never kept by a cache.
NO_STORE = {"Cache-Control": "no-store"}


async def _load(call: Call) -> UploadRecord:
    upload_id = call.path("upload_id")
    upload = await call.deps.direct.record(upload_id)
    check_visible(call.principal, upload)
    return upload


def _part_out(part: PartTicket) -> PartTicketOut:
    return PartTicketOut(
        part_number=part.number,
        method="PUT",
        url=part.request.url,
        headers=dict(part.request.headers),
        expires_at=ms_to_iso(part.expires_ms) or "",
    )


def _out(call: Call, ticket: Ticket) -> DirectUploadOut:
    upload, put = ticket.upload, ticket.put
    return DirectUploadOut(
        upload_id=upload.id,
        event_id=upload.event_id,
        filename=upload.filename,
        size=upload.size,
        mime_type=upload.mime_type,
        key=upload.key,
        multipart=bool(upload.s3_upload_id),
        s3_upload_id=upload.s3_upload_id or None,
        method="PUT" if put is not None else None,
        url=put.url if put is not None else None,
        headers=dict(put.headers) if put is not None else {},
        expires_at=ms_to_iso(ticket.url_expires_ms) or "",
        complete_by=ms_to_iso(upload.expires_ms) or "",
        complete_url=f"{call.deps.base_url}/v1/direct-uploads/{upload.id}/complete",
    )


@routes.post(
    "/v1/events/{event_id}/direct-uploads",
    operation_id="createDirectUpload",
    summary="Start an upload straight to S3",
    scope=Scope.PHOTOS_WRITE,
    body=DirectUploadCreate,
    response=DirectUploadOut,
    status=201,
    errors=(
        EVENT_NOT_FOUND,
        errors.EVENT_ARCHIVED,
        errors.PHOTO_CAP_REACHED,
        errors.INVALID_FILENAME,
        errors.UNSUPPORTED_TYPE,
        errors.FILE_TOO_LARGE,
        errors.DIRECT_PUT_TOO_LARGE,
    ),
)
async def create_direct_upload(call: Call, body: DirectUploadCreate) -> Reply[DirectUploadOut]:
    """Say the file's name, size and type; get a ticket bound to this event, this size and one
    object key. One PUT: send the file to ``url`` with ``headers``. Multipart: ask for each
    part's URL, then complete."""
    deps = call.deps
    event = await deps.events.get(call.principal, call.path("event_id"))
    ticket = await deps.direct.create(
        event,
        body.filename,
        body.size,
        body.mime_type,
        body.sha256,
        multipart=body.multipart,
        keep_duplicates=body.keep_duplicates,
    )
    return Reply(_out(call, ticket), headers=NO_STORE)


@routes.get(
    "/v1/direct-uploads/{upload_id}/parts/{part_number}",
    operation_id="signDirectUploadPart",
    summary="Sign one part's PUT",
    scope=Scope.PHOTOS_WRITE,
    query=PartSignQuery,
    response=PartTicketOut,
    errors=(
        UPLOAD_NOT_FOUND,
        errors.NOT_MULTIPART,
        errors.INVALID_PART_NUMBER,
        errors.UPLOAD_EXPIRED,
        *errors.UPLOAD_NOT_OPEN,
    ),
)
async def sign_direct_upload_part(call: Call, query: PartSignQuery) -> Reply[PartTicketOut]:
    """A short-lived URL to PUT part ``part_number`` (1 to 10,000; every part but the last at
    least 5 MiB) to S3, with its CRC32C signed in when given."""
    upload = await _load(call)
    try:
        number = int(call.path("part_number"))
    except ValueError:
        raise errors.INVALID_PART_NUMBER.error(
            errors=[FieldError("part_number", "a whole number from 1", "invalid")]
        ) from None
    [part] = call.deps.direct.sign_parts(upload, [number], query.crc32c)
    return Reply(_part_out(part), headers=NO_STORE)


@routes.post(
    "/v1/direct-uploads/{upload_id}/part-urls",
    operation_id="signDirectUploadParts",
    summary="Sign many parts' PUTs at once",
    scope=Scope.PHOTOS_WRITE,
    body=PartBatchSign,
    response=PartTicketList,
    errors=(
        UPLOAD_NOT_FOUND,
        errors.NOT_MULTIPART,
        errors.INVALID_PART_NUMBER,
        errors.UPLOAD_EXPIRED,
        *errors.UPLOAD_NOT_OPEN,
    ),
)
async def sign_direct_upload_parts(call: Call, body: PartBatchSign) -> Reply[PartTicketList]:
    """Up to 1,000 parts' URLs in one answer: a client that knows its parts up front saves a
    round trip (and the API a request) per part."""
    upload = await _load(call)
    signed = call.deps.direct.sign_parts(upload, body.part_numbers)
    return Reply(PartTicketList(parts=[_part_out(p) for p in signed]), headers=NO_STORE)


@routes.get(
    "/v1/direct-uploads/{upload_id}/parts",
    operation_id="listDirectUploadParts",
    summary="List the parts S3 holds",
    scope=Scope.PHOTOS_WRITE,
    response=PartsOut,
    errors=(UPLOAD_NOT_FOUND, errors.NOT_MULTIPART, errors.UPLOAD_EXPIRED, *errors.UPLOAD_NOT_OPEN),
)
async def list_direct_upload_parts(call: Call) -> PartsOut:
    """The parts S3 holds, as S3 lists them: how a client resumes a multipart upload."""
    upload = await _load(call)
    parts = await call.deps.direct.parts(upload)
    return PartsOut(
        parts=[S3Part(part_number=p.number, size=p.size, etag=f'"{p.etag}"') for p in parts]
    )


@routes.post(
    "/v1/direct-uploads/{upload_id}/complete",
    operation_id="completeDirectUpload",
    summary="Complete a direct upload",
    scope=Scope.PHOTOS_WRITE,
    body=DirectComplete,
    body_optional=True,
    response=UploadedPhoto,
    errors=(
        UPLOAD_NOT_FOUND,
        PHOTO_NOT_FOUND,
        errors.NOT_MULTIPART,
        errors.PARTS_MISMATCH,
        errors.NOTHING_UPLOADED,
        errors.SIZE_MISMATCH,
        errors.UNSUPPORTED_CONTENT,
        errors.TRUNCATED_FILE,
        errors.FILE_TOO_LARGE,
        errors.FILE_CHECKSUM_MISMATCH,
        errors.COMPLETE_IN_PROGRESS,
        errors.UPLOAD_EXPIRED,
        errors.UPLOAD_FAILED,
        *errors.UPLOAD_NOT_OPEN,
        errors.PHOTO_CAP_WOULD_BE_EXCEEDED,
        errors.EVENT_ARCHIVED,
    ),
)
async def complete_direct_upload(call: Call, body: DirectComplete) -> UploadedPhoto:
    """Check what S3 holds (its parts, size, type, completeness and the declared SHA-256) and
    create the photo, exactly once: a repeat answers the same photo. A file refused is deleted,
    and every later complete answers the same refusal. A file whose bytes equal a photo's already
    in the event (unless ``keep_duplicates``) is not kept: the answer is that photo, with
    ``duplicate_of``."""
    upload = await _load(call)
    parts = None if body.parts is None else [(p.part_number, p.etag) for p in body.parts]
    photo = await call.deps.direct.complete(upload, parts)
    return UploadedPhoto.of_completion(
        photo, upload.photo_id, lambda p: call.deps.photo_view(p, call.principal)
    )


@routes.delete(
    "/v1/direct-uploads/{upload_id}",
    operation_id="cancelDirectUpload",
    summary="Cancel a direct upload",
    scope=Scope.PHOTOS_WRITE,
    status=204,
    errors=(UPLOAD_NOT_FOUND, *errors.UPLOAD_NOT_OPEN),
)
async def cancel_direct_upload(call: Call) -> None:
    """Abort its multipart upload and delete what S3 holds of it (Uppy's
    ``abortMultipartUpload``)."""
    await call.deps.direct.cancel(await _load(call))

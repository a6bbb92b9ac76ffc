"""Chunked, resumable uploads: start, send chunks in any order, resume, complete, cancel."""

from __future__ import annotations

from darkroom_kit.problems import FieldError
from darkroom_kit.stored.uploads import UploadRecord

from darkroom_ingest import errors
from darkroom_ingest.api.declare import Call, Header, Reply, RouteTable
from darkroom_ingest.chunked import parse_digest_headers, upload_out
from darkroom_ingest.errors import (
    EVENT_NOT_FOUND,
    INVALID_CHUNK_INDEX,
    PHOTO_NOT_FOUND,
    UPLOAD_NOT_FOUND,
)
from darkroom_ingest.guests import arrives_hidden
from darkroom_ingest.schemas.photos import UploadedPhoto
from darkroom_ingest.schemas.uploads import ChunkOut, UploadCreate, UploadOut
from darkroom_ingest.tokens import Principal, Scope
from darkroom_ingest.web_support import body_pieces

routes = RouteTable("uploads")


async def _load(call: Call, *, with_parts: bool = True) -> UploadRecord:
    upload_id = call.path("upload_id")
    upload = await call.deps.chunked.record(upload_id, with_parts=with_parts)
    check_visible(call.principal, upload)
    return upload


def check_visible(principal: Principal, upload: UploadRecord) -> None:
    """An upload of an event the token does not see is not found (whatever its protocol)."""
    if not principal.sees(upload.event_id):
        raise UPLOAD_NOT_FOUND.error(f"No upload with id {upload.id!r}.")


def _out(call: Call, upload: UploadRecord) -> UploadOut:
    return UploadOut.model_validate(upload_out(upload, call.deps.base_url))


@routes.post(
    "/v1/events/{event_id}/uploads",
    operation_id="createUpload",
    summary="Start a chunked upload",
    scope=Scope.PHOTOS_UPLOAD,
    body=UploadCreate,
    response=UploadOut,
    status=201,
    location=True,
    errors=(
        EVENT_NOT_FOUND,
        errors.EVENT_ARCHIVED,
        errors.PHOTO_CAP_REACHED,
        errors.INVALID_FILENAME,
        errors.UNSUPPORTED_TYPE,
        errors.FILE_TOO_LARGE,
        errors.GUEST_LIMIT_REACHED,
    ),
)
async def create_upload(call: Call, body: UploadCreate) -> Reply[UploadOut]:
    """For videos, and any file over the batch limit: say the file's name, size and type, then
    send its chunks (``chunk_size`` bytes each but the last) in any order, in parallel."""
    deps = call.deps
    event = await deps.events.get(call.principal, call.path("event_id"))
    doc = await deps.chunked.create(
        event.document(),
        body.filename,
        body.size,
        body.mime_type,
        body.sha256,
        hidden=arrives_hidden(call.principal, event),
        keep_duplicates=body.keep_duplicates,
        admitted=lambda: deps.guests.count_in(call.principal, body.size),
    )
    upload = UploadRecord.of(doc)
    return Reply(_out(call, upload), headers={"Location": f"/v1/uploads/{upload.id}"})


@routes.get(
    "/v1/uploads/{upload_id}",
    operation_id="getUpload",
    summary="Read an upload's state",
    scope=Scope.PHOTOS_UPLOAD,
    response=UploadOut,
    errors=(UPLOAD_NOT_FOUND,),
)
async def get_upload(call: Call) -> UploadOut:
    """Its state and exactly which chunks arrived: how a client resumes."""
    return _out(call, await _load(call))


@routes.put(
    "/v1/uploads/{upload_id}/chunks/{index}",
    operation_id="putChunk",
    summary="Send one chunk",
    scope=Scope.PHOTOS_UPLOAD,
    body_kind="raw",
    response=ChunkOut,
    headers=(
        Header(
            "Content-Digest",
            "sha-256=:<base64>: and/or crc32c=:<base64>: of the chunk (RFC 9530); a mismatch "
            "is refused and the chunk not kept.",
        ),
        Header("X-Checksum-CRC32C", "The chunk's CRC32C, base64 (as S3 sends it)."),
    ),
    errors=(
        UPLOAD_NOT_FOUND,
        INVALID_CHUNK_INDEX,
        errors.CHUNK_OUT_OF_RANGE,
        errors.LENGTH_REQUIRED,
        errors.WRONG_CHUNK_SIZE,
        errors.CHUNK_CHECKSUM_MISMATCH,
        errors.CHUNK_ENDED_EARLY,
        errors.UPLOAD_EXPIRED,
        errors.WRONG_PROTOCOL,
        errors.FILE_TOO_LARGE,
        errors.BODY_TIMEOUT,
        errors.TOO_MANY_BODIES,
        *errors.UPLOAD_NOT_OPEN,
    ),
)
async def put_chunk(call: Call) -> ChunkOut:
    """The raw body is chunk ``index`` (from 0): exactly ``chunk_size`` bytes, but the last.
    Chunks may come in any order and in parallel; sending one again replaces it."""
    request, deps = call.request, call.deps
    upload = await _load(call, with_parts=False)
    try:
        index = int(call.path("index"))
    except ValueError:
        raise INVALID_CHUNK_INDEX.error(
            errors=[FieldError("index", "a whole number from 0", "invalid")]
        ) from None
    digests = parse_digest_headers(
        request.headers.get("Content-Digest"), request.headers.get("X-Checksum-CRC32C")
    )
    part = await deps.chunked.put_chunk(
        upload, index, request.content_length, digests, body_pieces(request)
    )
    chunk = ChunkOut.model_validate(part)
    deps.upload_bytes.inc(chunk.size)
    return chunk


@routes.post(
    "/v1/uploads/{upload_id}/complete",
    operation_id="completeUpload",
    summary="Complete an upload",
    scope=Scope.PHOTOS_UPLOAD,
    response=UploadedPhoto,
    errors=(
        UPLOAD_NOT_FOUND,
        PHOTO_NOT_FOUND,
        errors.MISSING_CHUNKS,
        errors.COMPLETE_IN_PROGRESS,
        errors.FILE_CHECKSUM_MISMATCH,
        errors.UNSUPPORTED_CONTENT,
        errors.UPLOAD_EXPIRED,
        errors.UPLOAD_FAILED,
        *errors.UPLOAD_NOT_OPEN,
        errors.PHOTO_CAP_WOULD_BE_EXCEEDED,
        errors.EVENT_ARCHIVED,
        errors.FILE_TOO_LARGE,
        errors.TRUNCATED_FILE,
        errors.WRONG_PROTOCOL,
        errors.DIRECT_ONLY,
    ),
)
async def complete_upload(call: Call) -> UploadedPhoto:
    """Assemble the file and create its photo, exactly once: a repeat answers the same photo. A
    file whose bytes equal a photo's already in the event (unless ``keep_duplicates``) is not
    stored: the answer is that photo, with ``duplicate_of``."""
    upload = await _load(call)
    if upload.protocol == "direct":
        # Its completion checks what S3 holds against its parts: POST its complete_url.
        raise errors.DIRECT_ONLY.error(f"Complete it with /v1/direct-uploads/{upload.id}/complete.")
    photo = await call.deps.chunked.complete(upload.id)
    return UploadedPhoto.of_completion(
        photo,
        upload.photo_id,
        lambda p: call.deps.photo_view(p, call.principal),
        reader=call.principal.may(Scope.PHOTOS_READ),
    )


@routes.delete(
    "/v1/uploads/{upload_id}",
    operation_id="cancelUpload",
    summary="Cancel an upload",
    scope=Scope.PHOTOS_UPLOAD,
    status=204,
    errors=(UPLOAD_NOT_FOUND, *errors.UPLOAD_NOT_OPEN),
)
async def delete_upload(call: Call) -> None:
    """Drop the upload and the chunks it received."""
    upload = await _load(call)
    await call.deps.chunked.cancel(upload.id)

"""tus 1.0.0 at ``/v1/tus/``: tus-js-client, Uppy's Tus plugin, tuspy, TUSKit and tus-android
upload unchanged. The upload names its event in ``Upload-Metadata`` (``event``), with
``filename`` and ``filetype``; the token travels in ``Authorization`` as everywhere else.

The same upload as the chunk API's (``GET /v1/uploads/{upload_id}`` shows it): the same S3
multipart upload, limits by real type, exactly-once completion and ``photo.uploaded``, which
happens with the last byte.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from darkroom_kit.httpapp import problem_middleware
from darkroom_kit.statuses import UploadState
from darkroom_kit.stored.uploads import UploadRecord

from darkroom_ingest import errors
from darkroom_ingest.api.declare import Call, Header, RouteTable
from darkroom_ingest.api.uploads import check_visible
from darkroom_ingest.errors import EVENT_NOT_FOUND, UPLOAD_NOT_FOUND
from darkroom_ingest.guests import arrives_hidden
from darkroom_ingest.tokens import Scope
from darkroom_ingest.tus import protocol
from darkroom_ingest.tus.service import NO_EVENT, Written
from darkroom_ingest.web_support import body_pieces

routes = RouteTable("tus")

# The aiohttp handler of tus discovery (OPTIONS /v1/tus/), which the middleware calls.
TUS_DISCOVERY: web.AppKey[Callable[[web.Request], Awaitable[web.StreamResponse]]] = web.AppKey(
    "tus_discovery"
)

BASE = "/v1/tus/"
ITEM = "/v1/tus/{upload_id}"

_STATE_HEADERS = (
    Header("Upload-Offset", "Bytes the server holds."),
    Header("Upload-Length", "The upload's length (absent while deferred)."),
    Header("Upload-Defer-Length", "1 while the length is not known yet."),
    Header("Upload-Expires", "When an unfinished upload is dropped (HTTP date)."),
    Header("Upload-Metadata", "The metadata sent at creation."),
    Header("Upload-Concat", "partial, or final;<urls> for a concatenated upload."),
    Header("Cache-Control", "no-store."),
    Header("X-Darkroom-Photo-Id", "Once the last byte is in: the photo it made (or equals)."),
    Header(
        "X-Darkroom-Duplicate-Of",
        "Once the last byte is in, if its bytes equal a photo's already in the event: that "
        "photo (nothing was stored for this upload).",
    ),
)
_PATCH_ERRORS = (
    UPLOAD_NOT_FOUND,
    errors.TUS_VERSION_UNSUPPORTED,
    errors.TUS_INVALID_HEADER,
    errors.TUS_CONTENT_TYPE,
    errors.TUS_OFFSET_MISMATCH,
    errors.TUS_UPLOAD_LOCKED,
    errors.TUS_SIZE_EXCEEDED,
    errors.TUS_CHECKSUM_MISMATCH,
    errors.TUS_CHECKSUM_UNSUPPORTED,
    errors.TUS_FINAL_TAKES_NO_BYTES,
    errors.CHUNK_ENDED_EARLY,
    errors.UPLOAD_EXPIRED,
    *errors.UPLOAD_NOT_OPEN,
    # The last byte completes the upload: what a complete can answer.
    errors.UNSUPPORTED_CONTENT,
    errors.TRUNCATED_FILE,
    errors.FILE_TOO_LARGE,
    errors.FILE_CHECKSUM_MISMATCH,
    errors.COMPLETE_IN_PROGRESS,
    errors.PHOTO_CAP_WOULD_BE_EXCEEDED,
    errors.EVENT_ARCHIVED,
    errors.BODY_TIMEOUT,
)


def _state_headers(upload: UploadRecord) -> dict[str, str]:
    headers = {
        "Upload-Offset": str(upload.offset),
        "Upload-Expires": protocol.format_expires(upload.expires_ms),
        "Cache-Control": "no-store",
    }
    if upload.length_deferred:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(upload.size)
    if upload.metadata:
        headers["Upload-Metadata"] = protocol.format_metadata(upload.metadata)
    if upload.concat == "partial":
        headers["Upload-Concat"] = "partial"
    elif upload.concat == "final":
        headers["Upload-Concat"] = "final;" + " ".join(BASE + i for i in upload.partials)
    if upload.state is UploadState.COMPLETED:
        # Not tus: the photo it made, also for a client whose last PATCH's answer was lost.
        headers.update(_photo_headers(upload.duplicate_of or upload.photo_id, upload))
    return headers


def _photo_headers(photo_id: str, upload: UploadRecord) -> dict[str, str]:
    headers = {"X-Darkroom-Photo-Id": photo_id}
    if photo_id != upload.photo_id:
        # Its bytes equal a photo's already in the event: that photo, not stored again.
        headers["X-Darkroom-Duplicate-Of"] = photo_id
    return headers


def _answer(status: int, written: Written) -> web.Response:
    headers = _state_headers(written.upload)
    if written.photo is not None:
        headers.update(_photo_headers(str(written.photo["_id"]), written.upload))
    return web.Response(status=status, headers=headers)


def _check_visible(call: Call, upload: UploadRecord) -> None:
    if upload.event_id != NO_EVENT:
        check_visible(call.principal, upload)
    elif upload.token_id != call.principal.token_id:
        # A partial upload that names no event yet: its maker's alone.
        raise UPLOAD_NOT_FOUND.error(f"No upload with id {upload.id!r}.")


async def _load(call: Call) -> UploadRecord:
    upload = await call.deps.tus.get(call.path("upload_id"))
    _check_visible(call, upload)
    return upload


def _body(request: web.Request) -> AsyncIterator[bytes]:
    return body_pieces(request)


def _has_body(request: web.Request) -> bool:
    return bool(request.content_length) or request.headers.get("Transfer-Encoding") == "chunked"


@routes.options(
    BASE,
    operation_id="tusOptions",
    summary="tus discovery",
    scope=None,
    public=True,
    raw=True,
    status=204,
    answer_headers=(
        Header("Tus-Version", "1.0.0"),
        Header("Tus-Extension", ", ".join(protocol.EXTENSIONS)),
        Header("Tus-Max-Size", "The largest upload taken, in bytes."),
        Header("Tus-Checksum-Algorithm", ", ".join(protocol.CHECKSUMS)),
    ),
)
async def tus_options(call: Call) -> web.Response:
    """What this tus server speaks: its version, extensions, size limit and checksums."""
    return web.Response(
        status=204,
        headers={
            "Tus-Version": protocol.VERSION,
            "Tus-Extension": ",".join(protocol.EXTENSIONS),
            "Tus-Max-Size": str(call.deps.tus.max_size),
            "Tus-Checksum-Algorithm": ",".join(protocol.CHECKSUMS),
        },
    )


@routes.post(
    BASE,
    operation_id="tusCreate",
    summary="Create a tus upload",
    scope=Scope.PHOTOS_UPLOAD,
    raw=True,
    status=201,
    body_kind="offset-octet-stream",
    location=True,
    headers=(
        Header("Tus-Resumable", "1.0.0"),
        Header("Upload-Length", "The file's size in bytes."),
        Header("Upload-Defer-Length", "1: the length is said by a later PATCH."),
        Header(
            "Upload-Metadata",
            "`event` (the event's id, required but for a final upload), `filename`, "
            "`filetype`, `keep_duplicates` (true: store it even if a photo in the event has "
            "the same bytes); each value base64.",
        ),
        Header("Upload-Concat", "partial, or final;<url> <url> ... of finished partials."),
        Header("Upload-Checksum", "Of a body sent with the creation (creation-with-upload)."),
    ),
    answer_headers=_STATE_HEADERS,
    errors=(
        EVENT_NOT_FOUND,
        errors.TUS_EVENT_REQUIRED,
        errors.TUS_PARTIAL_UNFINISHED,
        errors.GUEST_LIMIT_REACHED,
        errors.EVENT_ARCHIVED,
        errors.PHOTO_CAP_REACHED,
        errors.INVALID_FILENAME,
        errors.UNSUPPORTED_TYPE,
        *_PATCH_ERRORS,
    ),
)
async def tus_create(call: Call) -> web.Response:
    """A new upload (creation); with a body, its first bytes too (creation-with-upload); with
    ``Upload-Concat: final;...``, the upload made of finished partial uploads."""
    request, deps = call.request, call.deps
    headers = request.headers
    metadata = protocol.parse_metadata(headers.get("Upload-Metadata"))
    concat = protocol.parse_concat(headers.get("Upload-Concat"), BASE)
    length = protocol.non_negative("Upload-Length", headers.get("Upload-Length"))
    deferred = headers.get("Upload-Defer-Length")
    if concat is not None and not concat.partial:
        if length is not None:
            raise protocol.invalid("Upload-Length", "A final upload's length is its partials'.")
        final_event = (
            metadata.get("event")
            or call.principal.event_id
            or await deps.tus.event_of(concat.upload_ids[0])
        )
        joined_in = await deps.events.get(call.principal, final_event)
        written = await deps.tus.create_final(
            joined_in,
            concat.upload_ids,
            metadata,
            token_id=call.principal.token_id,
            hidden=arrives_hidden(call.principal, joined_in),
            # The file counts once, here; its partials counted its bytes.
            admitted=lambda: deps.guests.count_in(call.principal, 0),
        )
        response = _answer(201, written)
        response.headers["Location"] = BASE + written.upload.id
        return response
    if deferred is not None and deferred != "1":
        raise protocol.invalid("Upload-Defer-Length", "Upload-Defer-Length is 1.")
    if (length is None) == (deferred is None):
        raise protocol.invalid("Upload-Length", "Send Upload-Length or Upload-Defer-Length: 1.")
    event_id = metadata.get("event") or metadata.get("event_id") or call.principal.event_id
    partial = concat is not None and concat.partial
    if not event_id and not partial:
        # A partial upload may name none: tus-js-client names it on the final upload only.
        raise errors.TUS_EVENT_REQUIRED.error(
            "Name the event in Upload-Metadata: `event <base64 of its id>`.",
            errors=[protocol.field("Upload-Metadata", "no event", "required")],
        )
    event = await deps.events.get(call.principal, event_id) if event_id else None
    if call.principal.limited and length is None:
        raise protocol.invalid(
            "Upload-Length", "An upload through a guest link says its length at creation."
        )
    upload = await deps.tus.create(
        event,
        length,
        metadata,
        concat,
        token_id=call.principal.token_id,
        hidden=event is not None and arrives_hidden(call.principal, event),
        admitted=lambda: deps.guests.count_in(
            call.principal, length or 0, files=0 if concat is not None else 1
        ),
    )
    written = Written(upload)
    if _has_body(request):
        _check_content_type(request)
        written = await deps.tus.append(
            upload.id,
            0,
            None,
            protocol.parse_checksum(headers.get("Upload-Checksum")),
            _body(request),
            request.content_length,
        )
        deps.upload_bytes.inc(written.upload.offset)
    response = _answer(201, written)
    response.headers["Location"] = BASE + upload.id
    return response


@routes.head(
    ITEM,
    operation_id="tusHead",
    summary="A tus upload's offset",
    scope=Scope.PHOTOS_UPLOAD,
    raw=True,
    answer_headers=_STATE_HEADERS,
    errors=(
        UPLOAD_NOT_FOUND,
        errors.TUS_VERSION_UNSUPPORTED,
        errors.TUS_UPLOAD_GONE,
        errors.UPLOAD_FAILED,
    ),
)
async def tus_head(call: Call) -> web.Response:
    """How many bytes the server holds: where a client resumes."""
    upload = await _load(call)
    call.deps.tus.check_readable(upload)
    written = Written(upload)
    if call.deps.tus.needs_finish(upload):
        # Every byte arrived but the PATCH that brought the last one died before the photo
        # was made: made now, or a client that sees its offset at the length stops there.
        written = await call.deps.tus.finish(upload)
    return _answer(200, written)


def _check_content_type(request: web.Request) -> None:
    if request.content_type != protocol.OFFSET_OCTET_STREAM:
        raise errors.TUS_CONTENT_TYPE.error(
            f"Content-Type {request.content_type!r} is not {protocol.OFFSET_OCTET_STREAM}."
        )


@routes.patch(
    ITEM,
    operation_id="tusPatch",
    summary="Send bytes of a tus upload",
    scope=Scope.PHOTOS_UPLOAD,
    raw=True,
    status=204,
    body_kind="offset-octet-stream",
    headers=(
        Header("Tus-Resumable", "1.0.0"),
        Header("Upload-Offset", "Where these bytes begin: the upload's offset."),
        Header("Upload-Length", "The length, once, for an upload created with it deferred."),
        Header("Upload-Checksum", "`<algorithm> <base64 digest>` of the body; 460 if not."),
    ),
    answer_headers=_STATE_HEADERS,
    errors=_PATCH_ERRORS,
)
async def tus_patch(call: Call) -> web.Response:
    """The body's bytes at ``Upload-Offset``; the last byte makes the photo."""
    request, deps = call.request, call.deps
    _check_content_type(request)
    offset = protocol.non_negative("Upload-Offset", request.headers.get("Upload-Offset"))
    if offset is None:
        raise protocol.invalid("Upload-Offset", "Send Upload-Offset.")
    # Visibility is checked on the record the PATCH's own take reads: no read before it (a
    # round trip less on the path every byte takes).
    written = await deps.tus.append(
        call.path("upload_id"),
        offset,
        protocol.non_negative("Upload-Length", request.headers.get("Upload-Length")),
        protocol.parse_checksum(request.headers.get("Upload-Checksum")),
        _body(request),
        request.content_length,
        visible=lambda upload: _check_visible(call, upload),
    )
    deps.upload_bytes.inc(written.upload.offset - offset)
    return _answer(204, written)


@routes.delete(
    ITEM,
    operation_id="tusTerminate",
    summary="Terminate a tus upload",
    scope=Scope.PHOTOS_UPLOAD,
    raw=True,
    status=204,
    errors=(UPLOAD_NOT_FOUND, errors.TUS_VERSION_UNSUPPORTED, *errors.UPLOAD_NOT_OPEN),
)
async def tus_terminate(call: Call) -> web.Response:
    """Drop the upload and every byte it holds (termination)."""
    upload = await _load(call)
    await call.deps.tus.terminate(upload.id)
    return web.Response(status=204)


_OVERRIDES: dict[str, Callable[[Call], Awaitable[web.Response]]] = {
    "PATCH": tus_patch,
    "DELETE": tus_terminate,
}


@routes.post(
    ITEM,
    operation_id="tusMethodOverride",
    summary="PATCH or DELETE through POST",
    scope=Scope.PHOTOS_UPLOAD,
    raw=True,
    status=204,
    body_kind="offset-octet-stream",
    headers=(Header("X-HTTP-Method-Override", "PATCH or DELETE"),),
    answer_headers=_STATE_HEADERS,
    errors=_PATCH_ERRORS,
)
async def tus_method_override(call: Call) -> web.Response:
    """For clients behind proxies that pass only GET and POST."""
    method = call.request.headers.get("X-HTTP-Method-Override", "").upper()
    handler = _OVERRIDES.get(method)
    if handler is None:
        raise protocol.invalid("X-HTTP-Method-Override", "PATCH or DELETE.")
    return await handler(call)


@web.middleware
async def tus_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every tus answer, errors included, says the protocol version; every request but
    OPTIONS must speak it."""
    if not request.path.startswith(BASE):
        return await handler(request)

    async def versioned(request: web.Request) -> web.StreamResponse:
        if request.method != "OPTIONS":
            protocol.check_version(request.headers.get("Tus-Resumable"))
        elif request.path == BASE and "Access-Control-Request-Method" not in request.headers:
            # Discovery; a CORS preflight (it names a method) goes on to aiohttp-cors.
            return await request.app[TUS_DISCOVERY](request)
        return await handler(request)

    # Errors rendered here rather than by the outer problem middleware, so that they carry the
    # header too.
    response = await problem_middleware(request, versioned)
    response.headers["Tus-Resumable"] = protocol.VERSION
    if response.status == 412:
        response.headers["Tus-Version"] = protocol.VERSION
    return response

"""Serving originals and variants: to token holders by their names
(``/photos/{slug}/{filename}`` ...), and to anyone holding a signed link
(``/media/{photo_id}/{variant}/{name}``, see :mod:`darkroom_kit.links`)."""

from __future__ import annotations

import time
from urllib.parse import quote

from aiohttp import web
from darkroom_kit.errors import ServiceError
from darkroom_kit.links import STORED_VARIANT, LinkRefused, SignedLink, Variant
from darkroom_kit.statuses import OperationState, PhotoKind, PhotoStatus
from darkroom_kit.storage import ObjectNotFound
from darkroom_kit.stored.photos import PhotoRecord
from darkroom_kit.views import token_variant_name

from darkroom_ingest.api.declare import Call, RouteTable
from darkroom_ingest.errors import (
    ARCHIVE_NOT_FOUND,
    ARCHIVE_OUTDATED,
    HERO_PROCESSING,
    LINK_EXPIRED,
    LINK_INVALID,
    PHOTO_NOT_FOUND,
    THUMBNAIL_PROCESSING,
    VARIANT_UNAVAILABLE,
)
from darkroom_ingest.gallery import photo_not_found
from darkroom_ingest.schemas.media import LinkQuery
from darkroom_ingest.tokens import Scope

routes = RouteTable("serving")

PROCESSING = {"thumbnail": THUMBNAIL_PROCESSING, "hero": HERO_PROCESSING}
TOKEN_CACHE = "private, max-age=3600"
REFUSED = {"link_invalid": LINK_INVALID, "link_expired": LINK_EXPIRED}


def content_disposition(kind: str, filename: str) -> str:
    """RFC 6266: an ASCII fallback name and the exact one in UTF-8 (RFC 8187)."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def byte_range(request: web.Request, size: int, etag: str) -> tuple[int, int] | None:
    """The one range of bytes (first, last; inclusive) a request asks for, or None for the
    whole object: no Range, one this server ignores (several ranges, another unit, malformed:
    RFC 9110 lets a server answer those with the whole), or an If-Range that is not the
    current ETag. :class:`RangeNotSatisfiable` for a range that starts past the end."""
    if "Range" not in request.headers:
        return None
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range != etag:
        return None
    try:
        wanted = request.http_range
    except ValueError:
        return None
    start, stop = wanted.start, wanted.stop
    if start is None:
        return None
    if start < 0:  # the last -start bytes
        start = max(0, size + start)
    if start >= size:
        raise RangeNotSatisfiable
    last = size - 1 if stop is None else min(stop, size) - 1
    return start, last


class RangeNotSatisfiable(Exception):
    """A Range that starts past the end of the object: answered 416."""


async def _stream(
    call: Call,
    key: str,
    content_type: str,
    headers: dict[str, str],
    missing: Exception,
    size: int | None,
) -> web.StreamResponse:
    """The object at ``key``, streamed; 304 when ``If-None-Match`` names its ETag (in
    ``headers``), 206 with the part a single Range asks for (when ``size`` is known), 416 for
    a range past its end; ``missing`` raised when the object is not there."""
    request = call.request
    headers = {**headers, "Accept-Ranges": "bytes"}
    if headers["ETag"] in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    wanted = None
    if size is not None:
        try:
            wanted = byte_range(request, size, headers["ETag"])
        except RangeNotSatisfiable:
            return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    try:
        async with call.deps.store.open_stream(key, byte_range=wanted) as (obj, chunks):
            response = web.StreamResponse(headers=headers)
            if wanted is not None:
                response.set_status(206)
                response.headers["Content-Range"] = f"bytes {wanted[0]}-{wanted[1]}/{size}"
            response.content_type = content_type
            response.content_length = obj.size
            await response.prepare(request)
            async for chunk in chunks:
                await response.write(chunk)
            await response.write_eof()
    except ObjectNotFound:
        raise missing from None
    return response


async def _send(
    call: Call,
    photo: PhotoRecord,
    stored_variant: str | None,
    *,
    cache_control: str,
    disposition: str,
    not_found: str,
) -> web.StreamResponse:
    """The original (``stored_variant`` None) or a stored variant of ``photo``, streamed, with
    validators; a full 200 of an original counts a download."""
    deps = call.deps
    if stored_variant is None:
        # An original never changes under its photo id, so the id is a valid ETag without a hash.
        key, content_type = photo.original_key, photo.content_type
        size: int | None = photo.size
        etag = photo.sha256 or photo.id
    else:
        info = photo.variants.get(stored_variant)
        if info is None:
            if photo.status is PhotoStatus.FAILED:
                raise VARIANT_UNAVAILABLE.error(f"Processing failed: {photo.status_reason}.")
            raise PROCESSING[stored_variant].error(
                "It is being made; try again in a moment.", retry_after=1
            )
        key, etag, content_type = info.key, info.etag or photo.id, info.content_type
        size = info.size
    quoted = f'"{etag}"'
    headers = {
        "ETag": quoted,
        "Cache-Control": cache_control,
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": disposition,
    }
    response = await _stream(call, key, content_type, headers, photo_not_found(not_found), size)
    if response.status == 200 and stored_variant is None:
        await deps.photos.photos.count_download(photo.id)
    return response


async def _by_name(call: Call, variant: str | None) -> web.StreamResponse:
    deps = call.deps
    slug, filename = call.path("slug"), call.path("filename")
    event = await deps.events.by_slug(call.principal, slug)
    if event is None:
        raise photo_not_found(f"{slug}/{filename}")
    try:
        photo = await deps.gallery.by_name(call.principal, event, filename)
    except ServiceError as error:
        # A variant is named as what it is (``clip.mp4.jpg``): the photo is ``clip.mp4``.
        if error.kind is not PHOTO_NOT_FOUND or variant is None or not filename.endswith(".jpg"):
            raise
        photo = await deps.gallery.by_name(call.principal, event, filename.removesuffix(".jpg"))
    if variant is None:
        attachment = call.request.query.get("download") in ("1", "true")
        disposition = content_disposition(
            "attachment" if attachment else "inline",
            photo.original_filename or photo.filename,
        )
    else:
        disposition = content_disposition("inline", token_variant_name(photo.filename))
    return await _send(
        call,
        photo,
        variant,
        cache_control=TOKEN_CACHE,
        disposition=disposition,
        not_found=f"{slug}/{filename}",
    )


# What every media answer may be besides 200 (the whole file).
MEDIA_STATUSES = {
    206: "The part a single Range asked for (Content-Range says which); not counted as a download",
    304: "Not modified (If-None-Match matched the ETag)",
    416: "The Range starts past the end (Content-Range: bytes */size)",
}

_SERVING = {"scope": Scope.PHOTOS_READ, "binary": True, "also": MEDIA_STATUSES}


@routes.get(
    "/photos/{slug}/{filename}",
    operation_id="downloadOriginal",
    summary="Download an original",
    errors=(PHOTO_NOT_FOUND,),
    **_SERVING,
)
async def serve_original(call: Call) -> web.StreamResponse:
    """The file as uploaded, with an ETag; counts a download. ``?download=1`` asks for
    ``Content-Disposition: attachment`` with the name it was uploaded as."""
    return await _by_name(call, None)


@routes.get(
    "/thumbnails/{slug}/{filename}",
    operation_id="downloadThumbnail",
    summary="Download a thumbnail",
    errors=(PHOTO_NOT_FOUND, THUMBNAIL_PROCESSING, VARIANT_UNAVAILABLE),
    **_SERVING,
)
async def serve_thumbnail(call: Call) -> web.StreamResponse:
    """A JPEG of 400 px on the long edge. 404 thumbnail_processing (with Retry-After) until it
    is made."""
    return await _by_name(call, "thumbnail")


@routes.get(
    "/heroes/{slug}/{filename}",
    operation_id="downloadHero",
    summary="Download a hero image",
    errors=(PHOTO_NOT_FOUND, HERO_PROCESSING, VARIANT_UNAVAILABLE),
    **_SERVING,
)
async def serve_hero(call: Call) -> web.StreamResponse:
    """A JPEG of 1600 px on the long edge. 404 hero_processing (with Retry-After) until it is
    made."""
    return await _by_name(call, "hero")


async def _send_archive(call: Call, link: SignedLink) -> web.StreamResponse:
    """An archive's ZIP, while it has not expired."""
    deps = call.deps
    try:
        op = await deps.jobs.wait(link.photo_id, 0)
    except ServiceError:
        raise ARCHIVE_NOT_FOUND.error(f"No archive {link.photo_id!r}.") from None
    result = op.result or {}
    expires_ms = result.get("expires_ms")
    now_s = int(time.time())
    if (
        op.state is not OperationState.DONE
        or "deleted_ms" in result
        or not isinstance(expires_ms, int)
        or expires_ms // 1000 <= now_s
    ):
        raise ARCHIVE_NOT_FOUND.error(f"No archive {link.photo_id!r} (it may have expired).")
    if not await deps.jobs.archive_whole(op):
        raise ARCHIVE_OUTDATED.error(
            "A photo in this archive was deleted or hidden since it was made; ask for a new "
            "archive of the event."
        )
    quoted = f'"{result.get("sha256", op.id)}"'
    max_age = max(0, min(expires_ms // 1000, link.expires_s) - now_s)
    headers = {
        "ETag": quoted,
        "Cache-Control": f"private, max-age={max_age}",
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": content_disposition("attachment", link.name),
    }
    return await _stream(
        call,
        str(result["key"]),
        "application/zip",
        headers,
        ARCHIVE_NOT_FOUND.error(f"No archive {link.photo_id!r}."),
        result.get("size") if isinstance(result.get("size"), int) else None,
    )


def _check(call: Call, query: LinkQuery) -> SignedLink:
    try:
        return call.deps.links.check(
            call.path("photo_id"), call.path("variant"), call.path("name"), query.values()
        )
    except LinkRefused as refused:
        raise REFUSED[refused.code].error(refused.detail) from None


@routes.get(
    "/media/{photo_id}/{variant}/{name}",
    operation_id="downloadMedia",
    summary="Download through a signed link",
    scope=None,
    public=True,
    binary=True,
    also=MEDIA_STATUSES,
    query=LinkQuery,
    errors=(
        LINK_INVALID,
        LINK_EXPIRED,
        PHOTO_NOT_FOUND,
        ARCHIVE_NOT_FOUND,
        ARCHIVE_OUTDATED,
        THUMBNAIL_PROCESSING,
        HERO_PROCESSING,
        VARIANT_UNAVAILABLE,
    ),
)
async def serve_link(call: Call, query: LinkQuery) -> web.StreamResponse:
    """What a signed link from a photo's ``urls`` (or a download link) points at, without a
    token. 403 link_invalid or link_expired for a link that proves nothing (whether or not
    the photo exists); 404 photo_not_found once the photo is deleted, or hidden (unless the
    link was given to a caller who may see hidden photos); 410 archive_outdated for an
    archive holding a photo deleted (or hidden) since it was made. ``Cache-Control`` lets
    caches keep the file for the link's remaining life, at most MEDIA_CACHE_SECONDS."""
    link = _check(call, query)
    deps = call.deps
    if link.variant is Variant.ARCHIVE:
        return await _send_archive(call, link)
    record = await deps.photos.photos.get(link.photo_id)
    photo = PhotoRecord.maybe(record)
    if photo is None or (photo.is_hidden and not link.hidden_ok):
        raise photo_not_found(link.photo_id)
    max_age = max(0, min(link.expires_s - int(time.time()), deps.settings.media_cache_seconds))
    if link.variant is Variant.ORIGINAL:
        stored = None
        disposition = content_disposition(
            "attachment" if link.attachment else "inline",
            photo.original_filename or photo.filename,
        )
    else:
        if link.variant is Variant.POSTER and photo.kind is not PhotoKind.VIDEO:
            raise VARIANT_UNAVAILABLE.error("An image has no poster frame.")
        stored = STORED_VARIANT[link.variant]
        disposition = content_disposition("inline", link.name)
    return await _send(
        call,
        photo,
        stored,
        # A download is counted: a shared cache would answer repeats without us.
        cache_control=f"{'private' if link.attachment else 'public'}, max-age={max_age}",
        disposition=disposition,
        not_found=link.photo_id,
    )

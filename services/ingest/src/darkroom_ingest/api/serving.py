"""Serving originals and variants by their public URL (``/photos/{slug}/{filename}`` ...)."""

from __future__ import annotations

from aiohttp import web
from darkroom_kit.statuses import PhotoStatus
from darkroom_kit.storage import ObjectNotFound

from darkroom_ingest.api.declare import Call, RouteTable
from darkroom_ingest.errors import (
    HERO_PROCESSING,
    PHOTO_NOT_FOUND,
    THUMBNAIL_PROCESSING,
    VARIANT_UNAVAILABLE,
)
from darkroom_ingest.gallery import photo_not_found
from darkroom_ingest.tokens import Scope

routes = RouteTable("serving")

PROCESSING = {"thumbnail": THUMBNAIL_PROCESSING, "hero": HERO_PROCESSING}


async def _serve(call: Call, variant: str | None) -> web.StreamResponse:
    request, deps = call.request, call.deps
    slug, filename = call.path("slug"), call.path("filename")
    event = await deps.events.by_slug(call.principal, slug)
    if event is None:
        raise photo_not_found(f"{slug}/{filename}")
    photo = await deps.gallery.by_name(call.principal, event, filename)
    if variant is None:
        # An original never changes under its photo id, so the id is a valid ETag without a hash.
        key, content_type = photo.original_key, photo.content_type
        etag = photo.sha256 or photo.id
    else:
        info = photo.variants.get(variant)
        if info is None:
            if photo.status is PhotoStatus.FAILED:
                raise VARIANT_UNAVAILABLE.error(f"Processing failed: {photo.status_reason}.")
            raise PROCESSING[variant].error(
                "It is being made; try again in a moment.", retry_after=1
            )
        key, etag, content_type = info.key, info.etag or photo.id, info.content_type
    quoted = f'"{etag}"'
    headers = {
        "ETag": quoted,
        "Cache-Control": "private, max-age=3600",
        "X-Content-Type-Options": "nosniff",
    }
    if quoted in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    try:
        async with deps.store.open_stream(key) as (obj, chunks):
            response = web.StreamResponse(headers=headers)
            response.content_type = content_type
            response.content_length = obj.size
            await response.prepare(request)
            async for chunk in chunks:
                await response.write(chunk)
            await response.write_eof()
    except ObjectNotFound:
        raise photo_not_found(f"{slug}/{filename}") from None
    if variant is None:
        await deps.photos.photos.count_download(photo.id)
    return response


_SERVING = {
    "scope": Scope.PHOTOS_READ,
    "binary": True,
    "also": {304: "Not modified (If-None-Match matched the ETag)"},
}


@routes.get(
    "/photos/{slug}/{filename}",
    operation_id="downloadOriginal",
    summary="Download an original",
    errors=(PHOTO_NOT_FOUND,),
    **_SERVING,
)
async def serve_original(call: Call) -> web.StreamResponse:
    """The file as uploaded, with an ETag; counts a download."""
    return await _serve(call, None)


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
    return await _serve(call, "thumbnail")


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
    return await _serve(call, "hero")

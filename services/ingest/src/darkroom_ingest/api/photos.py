"""Photos: batch uploads, listing, reading, changing and deleting."""

from __future__ import annotations

from darkroom_kit.clock import ms_to_iso
from darkroom_kit.links import Variant
from darkroom_kit.views import PhotoView

from darkroom_ingest import batches
from darkroom_ingest.api.declare import Call, Reply, RouteTable
from darkroom_ingest.errors import (
    BODY_TOO_LARGE,
    EVENT_ARCHIVED,
    EVENT_NOT_FOUND,
    IDEMPOTENCY_KEY_IN_USE,
    MALFORMED_MULTIPART,
    NESTED_MULTIPART,
    NO_VALID_FILES,
    PHOTO_CAP_REACHED,
    PHOTO_CAP_WOULD_BE_EXCEEDED,
    PHOTO_NOT_FOUND,
    TOO_MANY_PARTS,
    UNKNOWN_CATEGORY,
    UNSUPPORTED_MEDIA_TYPE,
)
from darkroom_ingest.schemas.media import DownloadLinkIn, DownloadLinkOut
from darkroom_ingest.schemas.photos import (
    BatchOut,
    BulkDelete,
    BulkDeleteOut,
    BulkFailure,
    DuplicatesQuery,
    PhotoListQuery,
    PhotoPage,
    PhotoPatch,
    Skipped,
    UploadedPhoto,
)
from darkroom_ingest.tokens import Scope
from darkroom_ingest.uploads import batch_too_large
from darkroom_ingest.web_support import IDEMPOTENCY_LEASE

routes = RouteTable("photos")


@routes.post(
    "/v1/events/{event_id}/photos",
    operation_id="uploadPhotos",
    summary="Upload a batch of photos",
    scope=Scope.PHOTOS_WRITE,
    body_kind="multipart",
    query=DuplicatesQuery,
    response=BatchOut,
    status=201,
    also={200: "Every file was a duplicate of a photo already there: nothing new was stored."},
    errors=(
        EVENT_NOT_FOUND,
        EVENT_ARCHIVED,
        PHOTO_CAP_REACHED,
        PHOTO_CAP_WOULD_BE_EXCEEDED,
        NO_VALID_FILES,
        MALFORMED_MULTIPART,
        NESTED_MULTIPART,
        UNSUPPORTED_MEDIA_TYPE,
        BODY_TOO_LARGE,
        TOO_MANY_PARTS,
        UNKNOWN_CATEGORY,
        IDEMPOTENCY_KEY_IN_USE,
    ),
)
async def upload_batch(call: Call, query: DuplicatesQuery) -> Reply[BatchOut]:
    """Send files as multipart/form-data parts named ``photos`` (and optionally a
    ``category_id`` field). Each file is checked by its bytes; files that fail are skipped with a
    reason and the rest are stored. With an Idempotency-Key, a repeat stores nothing twice. A file
    whose bytes equal a photo's already in the event is not stored again (unless
    ``keep_duplicates``): its entry is that photo, with ``duplicate_of``."""
    request, deps = call.request, call.deps
    event = await deps.events.get(call.principal, call.path("event_id"))
    if not request.content_type.startswith("multipart/form-data"):
        raise UNSUPPORTED_MEDIA_TYPE.error(
            "Upload files as multipart/form-data parts named 'photos'."
        )
    limit = deps.settings.max_batch_bytes
    if request.content_length is not None and request.content_length > limit:
        raise batch_too_large(limit)
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise MALFORMED_MULTIPART.error(str(exc)) from None
    committed, skipped = await batches.upload_batch(
        deps, event, reader, request.get(IDEMPOTENCY_LEASE), query.keep_duplicates
    )
    return Reply(
        BatchOut(
            uploaded=[
                UploadedPhoto.of_outcome(deps.photo_view(c.photo, call.principal), c.duplicate)
                for c in committed
            ],
            skipped=[Skipped(**s.as_dict()) for s in skipped],
        ),
        status=None if any(not c.duplicate for c in committed) else 200,
    )


@routes.get(
    "/v1/events/{event_id}/photos",
    operation_id="listPhotos",
    summary="List an event's photos",
    scope=Scope.PHOTOS_READ,
    query=PhotoListQuery,
    response=PhotoPage,
    errors=(EVENT_NOT_FOUND,),
)
async def list_photos(call: Call, query: PhotoListQuery) -> PhotoPage:
    """An event's photos in the order asked for, filtered by category or visibility. A gallery
    token never sees hidden photos."""
    deps = call.deps
    event = await deps.events.get(call.principal, call.path("event_id"))
    photos, total = await deps.gallery.page(
        call.principal,
        event,
        query.limit,
        query.offset,
        category_id=query.category_id,
        is_hidden=query.is_hidden,
        sort=query.sort,
    )
    return PhotoPage(
        items=[deps.photo_view(p, call.principal) for p in photos],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )


@routes.get(
    "/v1/photos/{photo_id}",
    operation_id="getPhoto",
    summary="Read a photo",
    scope=Scope.PHOTOS_READ,
    response=PhotoView,
    errors=(PHOTO_NOT_FOUND,),
)
async def get_photo(call: Call) -> PhotoView:
    """A photo with its URLs, dimensions and processing status."""
    photo = await call.deps.gallery.get(call.principal, call.path("photo_id"))
    return call.deps.photo_view(photo, call.principal)


@routes.patch(
    "/v1/photos/{photo_id}",
    operation_id="updatePhoto",
    summary="Change a photo's details",
    scope=Scope.PHOTOS_WRITE,
    body=PhotoPatch,
    response=PhotoView,
    errors=(PHOTO_NOT_FOUND, UNKNOWN_CATEGORY),
)
async def patch_photo(call: Call, body: PhotoPatch) -> PhotoView:
    """Change its title, description, rating, keywords, category or visibility: only the fields
    sent change, and an explicit null clears one."""
    gallery = call.deps.gallery
    photo = await gallery.get(call.principal, call.path("photo_id"))
    fields = {name: getattr(body, name) for name in body.model_fields_set}
    return call.deps.photo_view(await gallery.patch(photo, fields), call.principal)


@routes.delete(
    "/v1/photos/{photo_id}",
    operation_id="deletePhoto",
    summary="Delete a photo",
    scope=Scope.PHOTOS_WRITE,
    status=204,
    errors=(PHOTO_NOT_FOUND,),
)
async def delete_photo(call: Call) -> None:
    """Delete a photo, its variants and its record; ``photo.deleted`` is sent."""
    gallery = call.deps.gallery
    await gallery.delete(await gallery.get(call.principal, call.path("photo_id")))


@routes.post(
    "/v1/photos/bulk-delete",
    operation_id="deletePhotos",
    summary="Delete many photos",
    scope=Scope.PHOTOS_WRITE,
    body=BulkDelete,
    response=BulkDeleteOut,
)
async def bulk_delete_photos(call: Call, body: BulkDelete) -> BulkDeleteOut:
    """Delete up to 1,000 photos; one ``photo.deleted`` each. Photos not found are listed, not
    an error."""
    deleted, missing = await call.deps.gallery.bulk_delete(call.principal, body.photo_ids)
    return BulkDeleteOut(
        deleted=deleted, failed=[BulkFailure(id=m, code="photo_not_found") for m in missing]
    )


@routes.post(
    "/v1/photos/{photo_id}/download-link",
    operation_id="createDownloadLink",
    summary="Make an expiring download link",
    scope=Scope.PHOTOS_READ,
    body=DownloadLinkIn,
    body_optional=True,
    response=DownloadLinkOut,
    errors=(PHOTO_NOT_FOUND,),
)
async def create_download_link(call: Call, body: DownloadLinkIn) -> DownloadLinkOut:
    """A link anyone may use, without a token, to download the original (Content-Disposition:
    attachment, with the name it was uploaded as) until it expires. Each full download through
    it counts in ``download_count``. It stops working at once if the photo is deleted, or
    hidden (unless the caller may see hidden photos)."""
    deps = call.deps
    photo = await deps.gallery.get(call.principal, call.path("photo_id"))
    url, expires_s = deps.links.sign(
        photo.id,
        Variant.ORIGINAL,
        photo.filename,
        body.expires_in_seconds,
        attachment=True,
        hidden_ok=call.principal.event_id is None,
    )
    return DownloadLinkOut(
        url=url,
        filename=photo.original_filename or photo.filename,
        expires_at=ms_to_iso(expires_s * 1000) or "",
    )

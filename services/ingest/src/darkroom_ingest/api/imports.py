"""S3 prefix imports: the configured sources, and an import of a prefix as an Operation."""

from __future__ import annotations

from darkroom_ingest.api.declare import Call, Reply, RouteTable
from darkroom_ingest.api.operations import ENDED, answer
from darkroom_ingest.errors import (
    EVENT_ARCHIVED,
    EVENT_NOT_FOUND,
    IDEMPOTENCY_KEY_IN_USE,
    IMPORT_SOURCE_NOT_FOUND,
    PHOTO_CAP_REACHED,
)
from darkroom_ingest.schemas.common import WaitQuery
from darkroom_ingest.schemas.imports import ImportRequest, ImportSourceOut, ImportSourcesOut
from darkroom_ingest.schemas.operations import OperationOut
from darkroom_ingest.tokens import Scope

routes = RouteTable("imports")


@routes.get(
    "/v1/import-sources",
    operation_id="listImportSources",
    summary="List the import sources",
    # Who may import may know what from; a guest link (photos.upload) may do neither.
    scope=Scope.PHOTOS_WRITE,
    response=ImportSourcesOut,
)
async def list_import_sources(call: Call) -> ImportSourcesOut:
    """The buckets configured on the server to import from, by name, with their bucket and
    prefix (never their endpoint or credentials)."""
    return ImportSourcesOut(
        items=[
            ImportSourceOut(name=s.name, bucket=s.config.bucket, prefix=s.config.prefix)
            for s in call.deps.imports.sources.names(call.principal)
        ]
    )


@routes.post(
    "/v1/events/{event_id}/imports",
    operation_id="importPhotos",
    summary="Import photos from an S3 prefix",
    # An import is an upload into the event: the scope of a batch upload.
    scope=Scope.PHOTOS_WRITE,
    body=ImportRequest,
    query=WaitQuery,
    response=OperationOut,
    status=202,
    also={200: ENDED},
    location=True,
    errors=(
        EVENT_NOT_FOUND,
        EVENT_ARCHIVED,
        PHOTO_CAP_REACHED,
        IMPORT_SOURCE_NOT_FOUND,
        IDEMPOTENCY_KEY_IN_USE,
    ),
)
async def import_photos(call: Call, body: ImportRequest, query: WaitQuery) -> Reply[OperationOut]:
    """Import every object under a prefix of a configured source as a photo of the event, as
    an Operation: each is checked as an upload is (type by its bytes, size, truncation, cap),
    copied server-side and announced with ``photo.uploaded``, exactly once (an import run again
    imports nothing twice). Its progress counts ``listed``, ``imported``, ``skipped`` and
    ``failed``; ``details.items`` gives each skipped or failed key with its reason. With
    ``watch``, new objects keep being imported until the Operation is stopped."""
    event = await call.deps.events.get(call.principal, call.path("event_id"))
    op_id = await call.deps.imports.start(
        call.principal,
        event,
        body.source,
        body.prefix,
        watch=body.watch,
        poll_seconds=body.poll_seconds,
        keep_duplicates=body.keep_duplicates,
    )
    return await answer(call, op_id, query.wait)

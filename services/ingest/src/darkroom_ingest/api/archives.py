"""ZIP archives of an event's photos: an Operation that metadata-repair carries out."""

from __future__ import annotations

from darkroom_ingest.api.declare import Call, Reply, RouteTable
from darkroom_ingest.api.operations import operation_out
from darkroom_ingest.errors import (
    ARCHIVE_IN_PROGRESS,
    EMPTY_SELECTION,
    EVENT_NOT_FOUND,
    PHOTO_NOT_IN_EVENT,
)
from darkroom_ingest.schemas.archives import ArchiveRequest
from darkroom_ingest.schemas.operations import OperationOut
from darkroom_ingest.tokens import Scope

routes = RouteTable("archives")


@routes.post(
    "/v1/events/{event_id}/archives",
    operation_id="createArchive",
    summary="Make a ZIP archive of an event's photos",
    scope=Scope.PHOTOS_READ,
    body=ArchiveRequest,
    body_optional=True,
    response=OperationOut,
    status=202,
    also={
        200: "The same selection was archived and has not expired: that archive (while it "
        "is being made, 202 with it)"
    },
    location=True,
    errors=(EVENT_NOT_FOUND, EMPTY_SELECTION, PHOTO_NOT_IN_EVENT, ARCHIVE_IN_PROGRESS),
)
async def create_archive(call: Call, body: ArchiveRequest) -> Reply[OperationOut]:
    """Start an Operation (kind ``archive``) that writes one ZIP of the photos to storage,
    streaming: files in order, stored as they are (no recompression), names made unique,
    ZIP64 when needed. Its ``progress`` counts files and bytes; when it is done its ``result``
    has ``download_url`` (a signed link, no token needed), ``size``, ``sha256``, ``files`` and
    ``expires_at`` (archives are deleted after ARCHIVE_TTL_SECONDS). Asking again for the same
    selection while that archive is being made answers it (202), once made and fresh too (200);
    another archive of the event while one is being made is 409 archive_in_progress. Once a
    photo it holds is deleted (or hidden, unless it was made with hidden photos), its link
    answers 410 archive_outdated: ask again for an archive without it."""
    deps = call.deps
    event = await deps.events.get(call.principal, call.path("event_id"))
    op, started = await deps.jobs.start_archive(
        call.principal, event, body.photo_ids, body.include_hidden, body.variant
    )
    return Reply(
        await operation_out(deps, op),
        status=202 if started or not op.final else 200,
        headers={"Location": f"/v1/operations/{op.id}"},
    )

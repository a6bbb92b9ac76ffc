"""Operations: long work started by a request (a dimension repair, a webhook recovery) and
read until it ends."""

from __future__ import annotations

import time
from typing import Any

from darkroom_kit.clock import datetime_to_ms, ms_to_iso
from darkroom_kit.links import MediaLinks, Variant
from darkroom_kit.statuses import OperationState
from darkroom_kit.stored.operations import OperationRecord

from darkroom_ingest.api.declare import Call, Reply, RouteTable
from darkroom_ingest.deps import Deps
from darkroom_ingest.errors import (
    EVENT_NOT_FOUND,
    INSUFFICIENT_SCOPE,
    OPERATION_NOT_CANCELLABLE,
    OPERATION_NOT_FOUND,
    WEBHOOK_NOT_FOUND,
)
from darkroom_ingest.jobs import ARCHIVE
from darkroom_ingest.schemas.common import WaitQuery
from darkroom_ingest.schemas.media import MAX_LINK_SECONDS
from darkroom_ingest.schemas.operations import OperationOut, RepairRequest
from darkroom_ingest.schemas.webhooks import RecoverRequest
from darkroom_ingest.tokens import Scope

routes = RouteTable("operations")

ENDED = "The Operation ended within ?wait: its result"


# What an archive's result holds for the services only.
INTERNAL_RESULT = frozenset({"key", "expires_ms", "deleted_ms", "selected_ms", "whole_at_removals"})


def _public_result(op: OperationRecord, links: MediaLinks, whole: bool) -> dict[str, Any] | None:
    """The result as callers see it: an archive's with a signed link to its ZIP (made at each
    read, so it is never older than the answer) while it holds no photo deleted or hidden
    since (else ``outdated``), never its storage key."""
    if op.result is None or op.kind != ARCHIVE:
        return op.result
    result = {k: v for k, v in op.result.items() if k not in INTERNAL_RESULT}
    if not whole:
        result["outdated"] = True
    expires_ms = op.result.get("expires_ms")
    if isinstance(expires_ms, int):
        result["expires_at"] = ms_to_iso(expires_ms)
        remaining_s = expires_ms // 1000 - int(time.time())
        if (
            op.state is OperationState.DONE
            and remaining_s > 0
            and "deleted_ms" not in op.result
            and whole
        ):
            result["download_url"] = links.sign(
                op.id,
                Variant.ARCHIVE,
                str(op.result.get("filename") or f"{op.id}.zip"),
                max(60, min(remaining_s, MAX_LINK_SECONDS)),
                attachment=True,
            )[0]
    return result


async def operation_out(deps: Deps, op: OperationRecord) -> OperationOut:
    """The Operation as an answer shows it (a made archive's photos checked when one of its
    event's went away since)."""
    whole = (
        op.kind != ARCHIVE
        or op.state is not OperationState.DONE
        or await deps.jobs.archive_whole(op)
    )
    return OperationOut(
        id=op.id,
        kind=op.kind,
        state=op.state,
        created_at=ms_to_iso(op.created_ms) or "",
        updated_at=ms_to_iso(op.updated_ms),
        progress=op.progress,
        result=_public_result(op, deps.links, whole),
        details=op.details or None,
        stop_requested_at=ms_to_iso(op.stop_requested_ms),
    )


async def answer(call: Call, op_id: str, wait: float) -> Reply[OperationOut]:
    """202 with the Operation, or 200 with its result when it ends within ``wait``."""
    op = await call.deps.jobs.wait(op_id, wait)
    status = 200 if op.final else 202
    return Reply(
        await operation_out(call.deps, op),
        status=status,
        headers={"Location": f"/v1/operations/{op_id}"},
    )


@routes.post(
    "/v1/photos/repair-dimensions",
    operation_id="repairDimensions",
    summary="Repair missing dimensions",
    scope=Scope.PHOTOS_WRITE,
    body=RepairRequest,
    query=WaitQuery,
    response=OperationOut,
    status=202,
    also={200: ENDED},
    location=True,
    errors=(EVENT_NOT_FOUND,),
)
async def repair_dimensions(
    call: Call, body: RepairRequest, query: WaitQuery
) -> Reply[OperationOut]:
    """Re-read missing width/height (and capture dates, if asked) from the stored files, as an
    Operation; each photo repaired sends ``photo.repaired``."""
    op_id = await call.deps.jobs.start_repair(
        call.principal, body.event_id, body.include_capture_date
    )
    return await answer(call, op_id, query.wait)


@routes.post(
    "/v1/webhooks/{webhook_id}/recover",
    operation_id="recoverWebhook",
    summary="Send failed deliveries again",
    scope=Scope.WEBHOOKS_MANAGE,
    body=RecoverRequest,
    query=WaitQuery,
    response=OperationOut,
    status=202,
    also={200: ENDED},
    location=True,
    errors=(WEBHOOK_NOT_FOUND,),
)
async def recover_webhook(
    call: Call, body: RecoverRequest, query: WaitQuery
) -> Reply[OperationOut]:
    """Send every failed delivery of a time range again, as an Operation: each keeps its
    webhook-id (receivers dedupe on it) and gets a fresh retry schedule."""
    endpoint = await call.deps.endpoints.get(call.principal, call.path("webhook_id"))
    op_id = await call.deps.jobs.start_recover(
        endpoint.id,
        datetime_to_ms(body.since),
        datetime_to_ms(body.until) if body.until is not None else None,
    )
    return await answer(call, op_id, query.wait)


@routes.get(
    "/v1/operations/{operation_id}",
    operation_id="getOperation",
    summary="Read an Operation",
    scope=(Scope.PHOTOS_READ, Scope.WEBHOOKS_MANAGE),
    query=WaitQuery,
    response=OperationOut,
    errors=(OPERATION_NOT_FOUND, INSUFFICIENT_SCOPE),
)
async def get_operation(call: Call, query: WaitQuery) -> OperationOut:
    """Its state, progress and, when done, its result. Readable with the scope that reads what
    it works on: photos.read for a repair, webhooks.manage for a webhook recovery."""
    op = await call.deps.jobs.read(call.principal, call.path("operation_id"), query.wait)
    return await operation_out(call.deps, op)


@routes.post(
    "/v1/operations/{operation_id}/cancel",
    operation_id="cancelOperation",
    summary="Stop an Operation",
    scope=Scope.PHOTOS_WRITE,
    query=WaitQuery,
    response=OperationOut,
    status=202,
    also={200: ENDED},
    location=True,
    errors=(OPERATION_NOT_FOUND, OPERATION_NOT_CANCELLABLE, INSUFFICIENT_SCOPE),
)
async def cancel_operation(call: Call, query: WaitQuery) -> Reply[OperationOut]:
    """Stop an import (a watching one never ends by itself): it ends ``done`` with
    ``result.stopped`` at its next step, keeping every photo imported so far. Stopping one that
    has ended answers it as it is."""
    op_id = call.path("operation_id")
    await call.deps.jobs.request_stop(call.principal, op_id)
    return await answer(call, op_id, query.wait)

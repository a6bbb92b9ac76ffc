"""Starting and reading Operations (long work: a dimension repair, a webhook recovery), with
who may read which."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.errors import ServiceError
from darkroom_kit.messaging import Envelope, Topology
from darkroom_kit.mongo import Database
from darkroom_kit.operations import INTERNAL, OPERATION_FIELDS, Operations, new_operation_id
from darkroom_kit.outbox import Outbox
from darkroom_kit.problems import FieldError
from darkroom_kit.statuses import OperationState, PhotoStatus
from darkroom_kit.stored.events import EventRecord
from darkroom_kit.stored.operations import (
    ArchiveParams,
    OperationRecord,
    RecoverParams,
    RepairParams,
)
from pymongo.errors import DuplicateKeyError

from darkroom_ingest.errors import (
    ARCHIVE_IN_PROGRESS,
    EMPTY_SELECTION,
    INSUFFICIENT_SCOPE,
    OPERATION_NOT_CANCELLABLE,
    OPERATION_NOT_FOUND,
    PHOTO_NOT_IN_EVENT,
    VALIDATION_FAILED,
)
from darkroom_ingest.events import EventService
from darkroom_ingest.tokens import Principal, Scope

REPAIR = "repair_dimensions"
RECOVER = "webhook_recover"
IMPORT = "s3_import"  # darkroom_ingest.imports
ARCHIVE = "archive"  # carried out by metadata-repair (darkroom_repair.archives)

# Who may read an Operation: whoever may start one of its kind (read side).
READ_SCOPES = {
    REPAIR: Scope.PHOTOS_READ,
    RECOVER: Scope.WEBHOOKS_MANAGE,
    IMPORT: Scope.PHOTOS_READ,
    ARCHIVE: Scope.PHOTOS_READ,
}
# Who may stop one, by kind: the kinds that can be stopped.
STOP_SCOPES = {IMPORT: Scope.PHOTOS_WRITE}


# Longer than the clock skew between replicas (their writes' times are compared).
CLOCK_SKEW_MS = 60_000
# In an archive's result: the event's removals (count and time) at which all its photos were
# there.
WHOLE_AT = "whole_at_removals"


class Jobs:
    def __init__(
        self,
        db: Database,
        publisher_outbox: Outbox,
        topology: Topology,
        events: EventService,
        grace_ms: int,
    ) -> None:
        self._operations = Operations(db)
        self._operation_docs = db[records.OPERATIONS]
        self._photos = db[records.PHOTOS]
        self._outbox = publisher_outbox
        self._topology = topology
        self._events = events
        self._grace_ms = grace_ms

    async def _start(
        self,
        op_id: str,
        kind: str,
        params: dict[str, Any],
        progress: dict[str, int],
        command: Envelope,
        exclusive: str | None = None,
    ) -> str:
        await self._operations.create(
            op_id,
            kind,
            command,
            exchange=self._topology.commands,
            outbox=self._outbox,
            grace_ms=self._grace_ms,
            params=params,
            progress=progress,
            exclusive=exclusive,
        )
        return op_id

    async def start_repair(
        self, principal: Principal, event_id: str | None, include_capture_date: bool
    ) -> str:
        """Re-read missing dimensions (and capture dates, if asked) of one event, or of every
        event the token sees."""
        event_id = event_id or principal.event_id
        if event_id is not None:
            await self._events.get(principal, event_id)
        params = RepairParams(event_id=event_id, include_capture_date=include_capture_date)
        op_id = new_operation_id()
        command = Envelope.new(
            records.REPAIR_REQUESTED, {"operation_id": op_id, **params.model_dump()}
        )
        progress = {"scanned": 0, "repaired": 0, "failed": 0}
        return await self._start(op_id, REPAIR, params.model_dump(), progress, command)

    async def start_recover(self, endpoint_id: str, since_ms: int, until_ms: int | None) -> str:
        """Send every failed delivery of an endpoint created in [since, until) again, each with
        its webhook-id unchanged and a fresh retry schedule."""
        until_ms = until_ms if until_ms is not None else now_ms()
        if until_ms <= since_ms:
            raise VALIDATION_FAILED.error(
                errors=[FieldError("/until", "must be after since", "range")]
            )
        params = RecoverParams(endpoint_id=endpoint_id, since_ms=since_ms, until_ms=until_ms)
        op_id = new_operation_id()
        command = Envelope.new(records.WEBHOOK_RECOVER, {"operation_id": op_id})
        # The total is counted when the recovery starts (the range may still be filling up).
        return await self._start(op_id, RECOVER, params.model_dump(), {"resent": 0}, command)

    async def start_archive(
        self,
        principal: Principal,
        event: EventRecord,
        photo_ids: list[str] | None,
        include_hidden: bool,
        variant: str,
    ) -> tuple[OperationRecord, bool]:
        """An archive Operation for this selection, and whether it was started now (False: one
        for the same selection is being made, or is made and has not expired: it is the
        answer). Another archive of the event in the making is 409: one at a time per event
        bounds what a caller can make the workers do."""
        if include_hidden and principal.event_id is not None:
            raise VALIDATION_FAILED.error(
                errors=[
                    FieldError(
                        "/include_hidden",
                        "a token bound to an event never sees hidden photos",
                        "not_allowed",
                    )
                ]
            )
        shown: dict[str, Any] = {} if include_hidden else {"is_hidden": {"$ne": True}}
        query: dict[str, Any] = {
            "event_id": event.id,
            "status": {"$ne": PhotoStatus.DELETING},
            **shown,
        }
        if photo_ids is not None:
            await self._check_selection(query, photo_ids)
            generation: Any = None
        else:
            # "Every photo" is the same selection only while it is the same photos (none came,
            # went, or was hidden or shown since).
            ids = sorted([str(d["_id"]) async for d in self._photos.find(query, {"_id": 1})])
            if not ids:
                raise EMPTY_SELECTION.error(
                    "The event has no photo to archive.",
                    errors=[FieldError("/photo_ids", "the event has no photo", "empty_selection")],
                )
            generation = hashlib.sha256("\n".join(ids).encode()).hexdigest()
        digest = hashlib.sha256(
            json.dumps(
                [event.id, photo_ids, include_hidden, variant, generation], separators=(",", ":")
            ).encode()
        ).hexdigest()
        in_hand = await self._archive_in_hand(principal, event, digest)
        if in_hand is not None:
            return in_hand, False
        params = ArchiveParams(
            event_id=event.id,
            photo_ids=photo_ids,
            include_hidden=include_hidden,
            variant=variant,
            selection=digest,
        )
        op_id = new_operation_id()
        command = Envelope.new(records.ARCHIVE_REQUESTED, {"operation_id": op_id})
        progress = {"files": 0, "files_total": 0, "bytes": 0, "bytes_total": 0, "skipped": 0}
        for last_try in (False, True):
            try:
                await self._start(
                    op_id, ARCHIVE, params.model_dump(), progress, command, f"archive:{event.id}"
                )
                break
            except DuplicateKeyError:
                # Another request for the event stored its archive since the lookup above.
                in_hand = await self._archive_in_hand(principal, event, digest)
                if in_hand is not None:
                    return in_hand, False
                if last_try:
                    raise _archive_busy(None) from None
                # ... and it has ended already: the event is free again.
        return await self.wait(op_id, 0), True

    async def archive_whole(self, op: OperationRecord) -> bool:
        """Whether every photo a made archive holds is still there (and shown, unless it was
        made with hidden ones): a deleted or hidden photo must not stay downloadable through
        it. Each photo is looked up only when one of the event's went away after the archive's
        photos were read (less a clock skew: the services write these times), and then once
        per removal: a whole verdict is kept with the number of removals it saw."""
        result = op.result or {}
        selected_ms = result.get("selected_ms")
        if not isinstance(selected_ms, int):
            return True  # made before archives recorded their photos
        event_id = op.params.get("event_id")
        removed = await self._events.store.removals(str(event_id))
        if removed is None:
            return False
        removed_ms, removals = removed
        if removed_ms is None or removed_ms < selected_ms - CLOCK_SKEW_MS:
            return True
        # Both: a replica of an older version moves the time only.
        seen = {"removals": removals, "removed_ms": removed_ms}
        if result.get(WHOLE_AT) == seen:
            return True
        kept = await self._operation_docs.find_one({"_id": op.id}, {INTERNAL: 1})
        photo_ids = ((kept or {}).get(INTERNAL) or {}).get("photo_ids")
        if not isinstance(photo_ids, list):
            return True  # made before archives recorded their photos
        query: dict[str, Any] = {
            "_id": {"$in": photo_ids},
            "event_id": event_id,
            "status": {"$ne": PhotoStatus.DELETING},
        }
        if not op.params.get("include_hidden"):
            query["is_hidden"] = {"$ne": True}
        # Counted after the removals were read: one since makes the next read count again.
        if await self._photos.count_documents(query) != len(photo_ids):
            return False
        # A slower read of the same archive may write an older verdict over it: the next read
        # then counts again, nothing worse.
        await self._operation_docs.update_one(
            {"_id": op.id}, {"$set": {f"result.{WHOLE_AT}": seen}}
        )
        return True

    async def _archive_in_hand(
        self, principal: Principal, event: EventRecord, digest: str
    ) -> OperationRecord | None:
        """The archive of this selection being made or made (not expired), if any; 409 when
        another archive of the event is being made."""
        fresh = await self._operation_docs.find_one(
            {
                "kind": ARCHIVE,
                "params.selection": digest,
                "$or": [
                    {"state": {"$in": [OperationState.QUEUED, OperationState.RUNNING]}},
                    {"state": OperationState.DONE, "result.expires_ms": {"$gt": now_ms()}},
                ],
            },
            OPERATION_FIELDS,
            sort=[("created_ms", -1)],
        )
        if fresh is not None:
            return OperationRecord.from_document(fresh)
        busy = await self._operation_docs.find_one(
            {
                "kind": ARCHIVE,
                "params.event_id": event.id,
                "state": {"$in": [OperationState.QUEUED, OperationState.RUNNING]},
            },
            OPERATION_FIELDS,
        )
        if busy is not None:
            busy_op = OperationRecord.from_document(busy)
            if busy_op.params.get("selection") == digest:
                return busy_op  # stored by a request at once, since the lookup above
            # Its id only to a caller who may read it (one with hidden photos is not a
            # gallery token's to see).
            raise _archive_busy(busy_op.id if _may_see(principal, busy_op) else None)
        return None

    async def _check_selection(self, query: dict[str, Any], photo_ids: list[str]) -> None:
        if not photo_ids:
            raise EMPTY_SELECTION.error(
                "Name at least one photo, or leave photo_ids out for every photo.",
                errors=[FieldError("/photo_ids", "empty", "empty_selection")],
            )
        seen: dict[str, int] = {}
        for i, photo_id in enumerate(photo_ids):
            if photo_id in seen:
                raise VALIDATION_FAILED.error(
                    errors=[FieldError(f"/photo_ids/{i}", "named twice", "duplicate")]
                )
            seen[photo_id] = i
        found = {
            str(doc["_id"])
            async for doc in self._photos.find({**query, "_id": {"$in": photo_ids}}, {"_id": 1})
        }
        # Not found, deleted, hidden (unless asked for) or another event's: one answer for all,
        # so a caller learns nothing of photos outside what it may archive.
        missing = [i for photo_id, i in seen.items() if photo_id not in found]
        if missing:
            raise PHOTO_NOT_IN_EVENT.error(
                f"{len(missing)} of the photos named are not photos of this event that the "
                "archive may hold.",
                errors=[
                    FieldError(f"/photo_ids/{i}", "not a photo of this event", "not_in_event")
                    for i in missing[:100]
                ],
            )

    async def wait(self, op_id: str, seconds: float) -> OperationRecord:
        """The Operation once it ends, or as it is after ``seconds``."""
        op = await self._operations.wait(op_id, seconds)
        if op is None:
            raise OPERATION_NOT_FOUND.error(f"No operation with id {op_id!r}.")
        return op

    async def read(self, principal: Principal, op_id: str, wait: float) -> OperationRecord:
        """An Operation, for a token that may start one of its kind."""
        op = await self._visible(principal, op_id)
        _require(principal, READ_SCOPES.get(op.kind, Scope.ADMIN))
        if wait and not op.final:
            op = await self.wait(op_id, wait)
        return op

    async def request_stop(self, principal: Principal, op_id: str) -> OperationRecord:
        """Ask an Operation to stop (its worker ends it); one that ended is answered as is."""
        op = await self._visible(principal, op_id)
        scope = STOP_SCOPES.get(op.kind)
        if scope is None:
            raise OPERATION_NOT_CANCELLABLE.error(
                f"A {op.kind} Operation runs to its end.", extra={"kind": op.kind}
            )
        _require(principal, scope)
        if op.final:
            return op
        return await self._operations.request_stop(op_id) or await self.wait(op_id, 0)

    async def _visible(self, principal: Principal, op_id: str) -> OperationRecord:
        """A token bound to one event sees no Operation on another, nor one over every event
        (a repair of all events names photos of each): not found."""
        op = await self.wait(op_id, 0)
        if not _may_see(principal, op):
            raise OPERATION_NOT_FOUND.error(f"No operation with id {op_id!r}.")
        return op


def _archive_busy(operation_id: str | None) -> ServiceError:
    return ARCHIVE_IN_PROGRESS.error(
        "Another archive of the event is being made; ask again when it ends.",
        extra={} if operation_id is None else {"operation_id": operation_id},
        retry_after=5,
    )


def _may_see(principal: Principal, op: OperationRecord) -> bool:
    """A token bound to one event sees no Operation on another, nor one over every event (a
    repair of all events names photos of each), nor an archive with hidden photos."""
    event_id = op.params.get("event_id")
    bound = principal.event_id is not None
    if event_id is None:
        return not bound
    if bound and op.params.get("include_hidden"):
        return False
    return principal.sees(str(event_id))


def _require(principal: Principal, scope: Scope) -> None:
    if not principal.may(scope):
        raise INSUFFICIENT_SCOPE.error(
            f"This needs the scope {scope.value!r}.", extra={"required_scope": scope.value}
        )

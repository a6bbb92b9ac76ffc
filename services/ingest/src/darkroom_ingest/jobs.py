"""Starting and reading Operations (long work: a dimension repair, a webhook recovery), with
who may read which."""

from __future__ import annotations

from typing import Any

from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.messaging import Envelope, Topology
from darkroom_kit.mongo import Database
from darkroom_kit.operations import Operations, new_operation_id
from darkroom_kit.outbox import Outbox
from darkroom_kit.problems import FieldError
from darkroom_kit.stored.operations import OperationRecord, RecoverParams, RepairParams

from darkroom_ingest.errors import (
    INSUFFICIENT_SCOPE,
    OPERATION_NOT_CANCELLABLE,
    OPERATION_NOT_FOUND,
    VALIDATION_FAILED,
)
from darkroom_ingest.events import EventService
from darkroom_ingest.tokens import Principal, Scope

REPAIR = "repair_dimensions"
RECOVER = "webhook_recover"
IMPORT = "s3_import"  # darkroom_ingest.imports

# Who may read an Operation: whoever may start one of its kind (read side).
READ_SCOPES = {
    REPAIR: Scope.PHOTOS_READ,
    RECOVER: Scope.WEBHOOKS_MANAGE,
    IMPORT: Scope.PHOTOS_READ,
}
# Who may stop one, by kind: the kinds that can be stopped.
STOP_SCOPES = {IMPORT: Scope.PHOTOS_WRITE}


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
        event_id = op.params.get("event_id")
        bound = principal.event_id is not None
        if (event_id is None and bound) or (
            event_id is not None and not principal.sees(str(event_id))
        ):
            raise OPERATION_NOT_FOUND.error(f"No operation with id {op_id!r}.")
        return op


def _require(principal: Principal, scope: Scope) -> None:
    if not principal.may(scope):
        raise INSUFFICIENT_SCOPE.error(
            f"This needs the scope {scope.value!r}.", extra={"required_scope": scope.value}
        )

"""The Operation record (collection ``operations``): a long task started through the API and
carried out by a worker. Written only through :mod:`darkroom_kit.operations`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from darkroom_kit.statuses import OPERATION_FINAL, OperationState
from darkroom_kit.stored._base import Record


class OperationRecord(Record):
    kind: str
    state: OperationState
    created_ms: int
    updated_ms: int | None = None
    # What it was asked to do (per kind: see RecoverParams), and how far it got.
    params: dict[str, Any] = Field(default_factory=dict)
    progress: dict[str, int] = Field(default_factory=dict)
    # Set when it ends: what it did (done), or {"error": reason, ...} (failed).
    result: dict[str, Any] | None = None
    # Items that failed so far, by id (a repair's photos), kept across restarts.
    failures: dict[str, str] = Field(default_factory=dict)
    # Where a batched worker got to (the last id it handled), kept across restarts.
    cursor: str | None = None
    # A kind's own record of its work so far (an import's skipped and failed keys).
    details: dict[str, Any] = Field(default_factory=dict)
    # Someone asked it to stop (POST /v1/operations/{id}/cancel); its worker ends it.
    stop_requested_ms: int | None = None

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> OperationRecord:
        return cls.of(doc)

    @property
    def final(self) -> bool:
        return self.state in OPERATION_FINAL


class RecoverParams(BaseModel):
    """The params of a ``webhook_recover`` Operation: an endpoint's failed deliveries created
    in ``[since_ms, until_ms)``."""

    model_config = ConfigDict(extra="ignore")

    endpoint_id: str
    since_ms: int
    until_ms: int


class RepairParams(BaseModel):
    """The params of a ``repair_dimensions`` Operation (its command carries the same)."""

    model_config = ConfigDict(extra="ignore")

    event_id: str | None
    include_capture_date: bool = False


class ArchiveParams(BaseModel):
    """The params of an ``archive`` Operation: photos of one event as one ZIP."""

    model_config = ConfigDict(extra="ignore")

    event_id: str
    # In this order; None: every photo of the event, in upload order.
    photo_ids: list[str] | None = None
    include_hidden: bool = False
    # original, thumbnail or hero.
    variant: str = "original"
    # A digest of the above: a request for the same selection while this one is fresh is
    # answered with this Operation.
    selection: str


class ImportParams(BaseModel):
    """The params of an ``s3_import`` Operation: objects under ``prefix`` of the import source
    ``source`` (named in upload-ingest's settings), into the event ``event_id``."""

    model_config = ConfigDict(extra="ignore")

    event_id: str
    source: str
    # Under the source's own prefix.
    prefix: str = ""
    watch: bool = False
    poll_seconds: float = 30.0
    # None: the event's own rule.
    keep_duplicates: bool | None = None
    category_id: str | None = None

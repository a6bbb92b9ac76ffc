"""``/v1/operations`` and the requests that start one."""

from __future__ import annotations

from typing import Any

from darkroom_kit.statuses import OperationState
from pydantic import BaseModel, Field

from darkroom_ingest.schemas.common import Strict


class RepairRequest(Strict):
    """What to repair."""

    event_id: str | None = Field(
        default=None, description="The event to repair; null: every event (the token's, if bound)."
    )
    include_capture_date: bool = Field(
        default=False, description="Also restore missing capture dates."
    )


class OperationOut(BaseModel):
    """Long work: its state, progress and, when done, its result."""

    id: str = Field(description="The Operation's id.")
    kind: str = Field(description="repair_dimensions, webhook_recover or s3_import.")
    state: OperationState = Field(description="queued, running, done or failed.")
    created_at: str = Field(description="When it was started (ISO 8601, UTC).")
    updated_at: str | None = Field(description="When it last moved.")
    progress: dict[str, int] = Field(description="Counters of the work so far.")
    result: dict[str, Any] | None = Field(description="What it did, once it ends.")
    details: dict[str, Any] | None = Field(
        default=None,
        description="The kind's own record of its work so far: an import's skipped and failed "
        "keys with their reasons (items, by an id of key and ETag).",
    )
    stop_requested_at: str | None = Field(
        default=None, description="When it was asked to stop (ISO 8601, UTC), if it was."
    )

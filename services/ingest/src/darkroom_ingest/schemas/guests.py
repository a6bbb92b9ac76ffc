"""``/v1/events/{event_id}/guest-links`` (guest upload links)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from darkroom_ingest.schemas.common import Strict


class GuestLinkCreate(Strict):
    """A new guest upload link for the event."""

    model_config = Strict.model_config | {
        "json_schema_extra": {
            "examples": [{"label": "Wedding guests", "expires_in_hours": 72, "max_files": 50}]
        }
    }

    label: Annotated[
        str, Field(min_length=1, max_length=200, description="What the link is for.")
    ] = "guests"
    expires_in_hours: Annotated[
        float | None,
        Field(gt=0, le=24 * 366, description="It stops working this long from now; null: never."),
    ] = None
    max_files: Annotated[
        int | None, Field(ge=1, description="Files it may add in all; null: no limit.")
    ] = None
    max_bytes: Annotated[
        int | None, Field(ge=1, description="Bytes it may add in all; null: no limit.")
    ] = None


class GuestLinkOut(BaseModel):
    """A guest upload link: a page that adds photos to one event and does nothing else."""

    id: str = Field(description="The link's id (its token's id).")
    event_id: str = Field(description="The event it adds photos to.")
    label: str = Field(description="What it is for.")
    url: str | None = Field(
        description="The upload page to share (only in the answer that made the link: it "
        "carries the token)."
    )
    token: str | None = Field(
        description="Its token (scope photos.upload), shown once, for clients of the API."
    )
    expires_at: str | None = Field(description="When it stops working (ISO 8601); null: never.")
    max_files: int | None = Field(description="Files it may add in all; null: no limit.")
    max_bytes: int | None = Field(description="Bytes it may add in all; null: no limit.")
    files_used: int = Field(description="Files it added (counted as each upload starts).")
    bytes_used: int = Field(description="Bytes it added (as declared by each upload).")
    revoked: bool = Field(description="Revoked: it no longer works.")
    created_at: str = Field(description="When it was made (ISO 8601, UTC).")


class GuestLinkList(BaseModel):
    """An event's guest upload links."""

    items: list[GuestLinkOut] = Field(description="The links, oldest first.")

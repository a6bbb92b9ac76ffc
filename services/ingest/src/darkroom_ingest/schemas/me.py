"""``/v1/me``."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MeOut(BaseModel):
    """The token the request was made with."""

    id: str = Field(description="The token's id.")
    name: str = Field(description="The name it was created with.")
    scopes: list[str] = Field(description="The scopes it was granted.")
    effective_scopes: list[str] = Field(
        description="Every scope it holds, with those its granted scopes imply."
    )
    event_id: str | None = Field(
        description="Set for a gallery token: it sees this event only, and no hidden photo."
    )
    created_at: str = Field(description="When it was created (ISO 8601, UTC).")

"""``/v1/import-sources`` and ``/v1/events/{id}/imports``."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from darkroom_ingest.schemas.common import Strict


class ImportSourceOut(BaseModel):
    """A bucket photos can be imported from. Its endpoint and credentials stay on the server."""

    name: str = Field(description="What a request names it by.")
    bucket: str = Field(description="Its bucket.")
    prefix: str = Field(description="The prefix every import from it is under.")


class ImportSourcesOut(BaseModel):
    """The import sources configured on the server."""

    items: list[ImportSourceOut] = Field(description="Each source, by name.")


class ImportRequest(Strict):
    """What to import."""

    source: Annotated[str, Field(min_length=1, max_length=100)] = Field(
        description="The import source's name (GET /v1/import-sources)."
    )
    prefix: Annotated[str, Field(max_length=1024)] = Field(
        default="",
        description="Objects whose key starts with this (under the source's own prefix); "
        "empty: all of the source.",
    )
    watch: bool = Field(
        default=False,
        description="Keep importing new objects under the prefix until the Operation is "
        "stopped (POST /v1/operations/{id}/cancel).",
    )
    poll_seconds: Annotated[float, Field(ge=1, le=86_400)] | None = Field(
        default=None, description="How often a watching import lists the prefix again."
    )
    keep_duplicates: bool | None = Field(
        default=None,
        description="Import objects whose bytes equal a photo of the event too; null: the "
        "event's own rule.",
    )

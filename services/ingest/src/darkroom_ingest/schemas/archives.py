"""ZIP archives of an event's photos."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from darkroom_ingest.schemas.common import Strict

MAX_ARCHIVE_PHOTOS = 10_000


class ArchiveRequest(Strict):
    """Which photos go into the archive, and which file of each."""

    photo_ids: list[str] | None = Field(
        default=None,
        max_length=MAX_ARCHIVE_PHOTOS,
        description="These photos of the event, in this order (each once); null: every photo "
        "of the event, in upload order.",
    )
    include_hidden: bool = Field(
        default=False,
        description="Also hidden photos (not for a token bound to an event, which never sees "
        "them).",
    )
    variant: Literal["original", "hero", "thumbnail"] = Field(
        default="original",
        description="The file of each photo: the original as uploaded, or a JPEG variant (a "
        "photo without that variant yet is left out and counted in progress.skipped).",
    )

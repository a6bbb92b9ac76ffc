"""The photo record (collection ``photos``; upload-ingest writes it, thumbnailing and
metadata-repair ``$set`` the fields they own)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from darkroom_kit.statuses import PhotoKind, PhotoStatus
from darkroom_kit.stored._base import Record


class StoredVariant(BaseModel):
    """A rendered variant as thumbnailing stores it."""

    model_config = ConfigDict(extra="ignore")

    key: str
    etag: str | None = None
    size: int | None = None
    width: int | None = None
    height: int | None = None
    content_type: str = "image/jpeg"


def _null_as(empty: Any) -> BeforeValidator:
    """A cleared list or map may be stored as null (a PATCH with an explicit null clears it;
    records written by earlier versions left some out): read as empty."""
    return BeforeValidator(lambda value: type(empty)() if value is None else value)


class PhotoRecord(Record):
    event_id: str
    event_slug: str
    filename: str
    original_filename: str | None = None
    content_type: str
    kind: PhotoKind = PhotoKind.IMAGE
    size: int
    sha256: str | None = None
    original_key: str
    category_id: str | None = None
    status: PhotoStatus
    status_reason: str | None = None
    width: int | None = None
    height: int | None = None
    captured_at_ms: int | None = None
    duration_ms: int | None = None
    variants: Annotated[dict[str, StoredVariant], _null_as({})] = Field(default_factory=dict)
    created_ms: int
    title: str | None = None
    description: str | None = None
    rating: int | None = None
    keywords: Annotated[list[str], _null_as([])] = Field(default_factory=list)
    is_hidden: Annotated[bool, BeforeValidator(bool)] = False
    download_count: Annotated[int, BeforeValidator(lambda v: v or 0)] = 0
    reservation_id: str | None = None
    request_key: str | None = None
    # Set while duplicates of it are refused: "<event id>/<sha256>", unique (a sparse index), so
    # two identical files in flight at once make one photo. Removed when the photo is deleted.
    content_key: str | None = None
    # An imported object's identity (source, key, ETag, size); unique per event.
    import_ref: str | None = None
    # metadata-repair read its file and found no capture date in it: not looked for again.
    capture_date_absent: bool = False

    def object_keys(self) -> list[str]:
        """The original's key and every stored variant's."""
        return [self.original_key, *(v.key for v in self.variants.values() if v.key)]

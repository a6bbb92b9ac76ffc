"""``/v1/events/{event_id}/photos`` and ``/v1/photos``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

from darkroom_kit.mongo import Document
from darkroom_kit.stored.photos import PhotoRecord
from darkroom_kit.views import PhotoView
from pydantic import BaseModel, Field, field_validator

from darkroom_ingest.schemas.common import KeepDuplicates, Page, PageQuery, Strict

PhotoSort = Literal[
    "upload_date_asc",
    "upload_date_desc",
    "capture_date_asc",
    "capture_date_desc",
    "filename_asc",
    "filename_desc",
    "size_asc",
    "size_desc",
    "rating_asc",
    "rating_desc",
]


class PhotoListQuery(PageQuery):
    category_id: Annotated[str | None, Field(description="Only photos of this category.")] = None
    is_hidden: Annotated[
        bool | None, Field(description="Only hidden (true) or only visible (false) photos.")
    ] = None
    sort: Annotated[PhotoSort, Field(description="The order of the list.")] = "upload_date_desc"


class PhotoPatch(Strict):
    """Only the fields sent change; an explicit null clears one."""

    is_hidden: Annotated[bool | None, Field(description="Hide it from gallery tokens.")] = None
    title: Annotated[str | None, Field(max_length=300, description="A title.")] = None
    description: Annotated[str | None, Field(max_length=5000, description="A description.")] = None
    rating: Annotated[int | None, Field(ge=1, le=5, description="The owner's rating.")] = None
    keywords: Annotated[
        str | list[Annotated[str, Field(max_length=100)]] | None,
        Field(description="Keywords: an array, or one string with commas."),
    ] = None
    category_id: Annotated[
        str | None, Field(description="One of the event's category ids, or null for none.")
    ] = None

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        items = value.split(",") if isinstance(value, str) else value
        out = list(dict.fromkeys(k.strip() for k in items if k.strip()))
        if len(out) > 100:
            raise ValueError("at most 100 keywords")
        return out


class BulkDelete(Strict):
    """The photos to delete."""

    photo_ids: Annotated[
        list[str], Field(min_length=1, max_length=1000, description="The photos to delete.")
    ]


class BulkFailure(BaseModel):
    """A photo that was not deleted."""

    id: str = Field(description="A photo that was not deleted.")
    code: str = Field(description="Why: photo_not_found.")


class BulkDeleteOut(BaseModel):
    """What a bulk delete did, photo by photo."""

    deleted: list[str] = Field(description="The photos deleted.")
    failed: list[BulkFailure] = Field(description="The photos not deleted, and why.")


class Skipped(BaseModel):
    """A file of a batch that was not stored."""

    filename: str | None = Field(description="Its name as sent.")
    field: str = Field(description="Its form field, such as photos[2].")
    code: str = Field(description="Why, as a stable code (such as unsupported_type).")
    detail: str = Field(description="Why, in words.")


class DuplicatesQuery(BaseModel):
    """How an upload treats a file equal to a photo already in the event."""

    keep_duplicates: KeepDuplicates = None


class UploadedPhoto(PhotoView):
    """A photo an upload ended as: the new photo, or the one already there that its bytes equal."""

    duplicate_of: str | None = Field(
        default=None,
        description="Set when the file was not stored because a photo in the event has the same "
        "bytes (SHA-256): that photo's id, which this answer describes. No photo.uploaded is "
        "sent for it.",
    )

    @classmethod
    def of_outcome(cls, view: PhotoView, duplicate: bool) -> UploadedPhoto:
        return cls(**dict(view), duplicate_of=view.id if duplicate else None)

    @classmethod
    def of_completion(
        cls,
        photo: Document,
        upload_photo_id: str,
        view: Callable[[PhotoRecord], PhotoView],
        *,
        reader: bool = True,
    ) -> UploadedPhoto:
        """An upload's photo: a copy of another when it is not the one chosen at its creation.

        ``reader``: whether the caller may read the event's photos. One who may not (a guest
        link) learns that its file is there, not what the owner wrote about that photo."""
        record = PhotoRecord.of(photo)
        uploaded = cls.of_outcome(view(record), record.id != upload_photo_id)
        if uploaded.duplicate_of is None or reader:
            return uploaded
        return uploaded.model_copy(
            update={
                "title": None,
                "description": None,
                "keywords": [],
                "rating": None,
                "category_id": None,
                "is_hidden": False,
            }
        )


class BatchOut(BaseModel):
    """What a batch upload stored and what it skipped."""

    uploaded: list[UploadedPhoto] = Field(
        description="What each file sent became, in the order sent: a new photo, or (with "
        "duplicate_of) the photo already there with the same bytes."
    )
    skipped: list[Skipped] = Field(description="The files not stored, and why.")


class PhotoPage(Page[PhotoView]):
    """A page of photos."""

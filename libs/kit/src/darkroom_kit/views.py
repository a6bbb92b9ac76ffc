"""The public views of records: what the API answers and what webhook payloads carry, one model
each, built from the stored record in one place."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from darkroom_kit.clock import ms_to_iso
from darkroom_kit.links import LinkedPhoto, MediaUrlsView
from darkroom_kit.statuses import EventStatus, PhotoKind, PhotoStatus
from darkroom_kit.stored.events import EventRecord
from darkroom_kit.stored.photos import PhotoRecord


class View(BaseModel):
    model_config = ConfigDict(use_enum_values=False)


class VariantView(View):
    """A rendered variant of a photo (``thumbnail``, ``hero``) as the public sees it."""

    width: int | None = Field(description="Width in pixels.")
    height: int | None = Field(description="Height in pixels.")
    size: int | None = Field(description="Size in bytes.")
    content_type: str | None = Field(
        default=None, description="What it is (image/jpeg unless thumbnailing is set otherwise)."
    )


class FeedbackView(View):
    """Guest feedback on a photo (all zero until guest feedback exists)."""

    likes: int = Field(description="How many guests liked the photo.")
    average_rating: float | None = Field(description="The guests' mean rating.")
    comment_count: int = Field(description="How many comments it has.")


NO_FEEDBACK = FeedbackView(likes=0, average_rating=None, comment_count=0)


class PhotoView(View):
    """A photo or video as the public sees it: in API answers and in webhook payloads."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "ph_01JD9Z6W3ZQ8M4X2V7K5N1B0C9",
                    "event_id": "ev_01JD9Z5Q0R3T6Y8U1I4O7P2A5S",
                    "filename": "IMG_0042.jpg",
                    "original_filename": "IMG_0042.jpg",
                    "content_type": "image/jpeg",
                    "kind": "image",
                    "size": 4815162,
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "width": 6000,
                    "height": 4000,
                    "captured_at": "2026-06-20T14:03:11Z",
                    "duration_ms": None,
                    "uploaded_at": "2026-06-20T18:22:05.120Z",
                    "category_id": None,
                    "status": "processed",
                    "status_reason": None,
                    "title": None,
                    "description": None,
                    "rating": None,
                    "keywords": [],
                    "is_hidden": False,
                    "feedback": {"likes": 0, "average_rating": None, "comment_count": 0},
                    "download_count": 0,
                    "urls": {
                        "original": "https://photos.example.com/media/ph_01JD9Z6W3ZQ8M4X2V7K5N1B0C9"
                        "/original/IMG_0042.jpg?exp=1782000000&kid=2026-12&sig=Zm9v",
                        "thumbnail": "https://photos.example.com/media/ph_01JD9Z6W3ZQ8M4X2V7K5N1B0C9"
                        "/thumbnail/IMG_0042.jpg?exp=1782000000&kid=2026-12&sig=YmFy",
                        "hero": "https://photos.example.com/media/ph_01JD9Z6W3ZQ8M4X2V7K5N1B0C9"
                        "/hero/IMG_0042.jpg?exp=1782000000&kid=2026-12&sig=YmF6",
                        "poster": None,
                        "expires_at": "2026-06-20T22:40:00Z",
                    },
                    "url": "https://photos.example.com/photos/anna-and-ben/IMG_0042.jpg",
                    "thumbnail_url": "https://photos.example.com/thumbnails/anna-and-ben/IMG_0042.jpg",
                    "hero_url": "https://photos.example.com/heroes/anna-and-ben/IMG_0042.jpg",
                    "variants": {
                        "thumbnail": {
                            "width": 400,
                            "height": 267,
                            "size": 31250,
                            "content_type": "image/jpeg",
                        }
                    },
                }
            ]
        }
    )

    id: str = Field(description="The photo's id.")
    event_id: str = Field(description="The event the photo belongs to.")
    filename: str = Field(description="Its file name within the event (unique per event).")
    original_filename: str = Field(description="The name as uploaded.")
    content_type: str = Field(description="The media type sniffed from its bytes.")
    kind: PhotoKind = Field(description="An image, or a video (with a poster frame).")
    size: int = Field(description="Size of the original in bytes.")
    sha256: str | None = Field(description="Hex SHA-256 of the original.")
    width: int | None = Field(description="Width in pixels, once known.")
    height: int | None = Field(description="Height in pixels, once known.")
    captured_at: str | None = Field(
        description="Capture time from its metadata (ISO 8601, UTC), if any."
    )
    duration_ms: int | None = Field(default=None, description="A video's length.")
    uploaded_at: str = Field(description="When it was stored (ISO 8601, UTC).")
    category_id: str | None = Field(description="The event category it is filed under, if any.")
    status: PhotoStatus = Field(
        description="uploaded (variants pending), processed, failed (see status_reason), or "
        "deleting."
    )
    status_reason: str | None = Field(description="Why processing failed (a stable code).")
    title: str | None = Field(description="Its title, if set.")
    description: str | None = Field(description="Its description, if set.")
    rating: int | None = Field(description="The owner's rating, 1 to 5.")
    keywords: list[str] = Field(description="Keywords, in order.")
    is_hidden: bool = Field(description="Hidden from gallery tokens.")
    feedback: FeedbackView = Field(description="Guest feedback aggregates.")
    download_count: int = Field(description="How often the original was served.")
    urls: MediaUrlsView | None = Field(
        default=None,
        description="Signed links that work without a token (in every API answer and webhook "
        "payload).",
    )
    url: str = Field(description="The original, for a token holder (send the token).")
    thumbnail_url: str = Field(
        description="The thumbnail, for a token holder; the name ends in .jpg (what it is)."
    )
    hero_url: str = Field(description="The hero (large preview), for a token holder.")
    variants: dict[str, VariantView] = Field(description="Rendered variants by name.")

    @classmethod
    def of(cls, photo: PhotoRecord, base_url: str, urls: MediaUrlsView | None = None) -> PhotoView:
        slug = photo.event_slug
        name = quote(photo.filename, safe="")
        variant = quote(token_variant_name(photo.filename), safe="")
        return cls(
            id=photo.id,
            event_id=photo.event_id,
            filename=photo.filename,
            original_filename=photo.original_filename or photo.filename,
            content_type=photo.content_type,
            kind=photo.kind,
            size=photo.size,
            sha256=photo.sha256,
            width=photo.width,
            height=photo.height,
            captured_at=ms_to_iso(photo.captured_at_ms),
            duration_ms=photo.duration_ms,
            uploaded_at=ms_to_iso(photo.created_ms) or "",
            category_id=photo.category_id,
            status=photo.status,
            status_reason=photo.status_reason,
            title=photo.title,
            description=photo.description,
            rating=photo.rating,
            keywords=photo.keywords,
            is_hidden=photo.is_hidden,
            feedback=NO_FEEDBACK,
            download_count=photo.download_count,
            urls=urls,
            url=f"{base_url}/photos/{slug}/{name}",
            thumbnail_url=f"{base_url}/thumbnails/{slug}/{variant}",
            hero_url=f"{base_url}/heroes/{slug}/{variant}",
            variants={
                k: VariantView(
                    width=v.width, height=v.height, size=v.size, content_type=v.content_type
                )
                for k, v in photo.variants.items()
            },
        )

    @classmethod
    def of_document(cls, doc: dict[str, Any], base_url: str) -> PhotoView:
        return cls.of(PhotoRecord.of(doc), base_url)


def token_variant_name(filename: str) -> str:
    """The name a variant is served under to token holders: the photo's file name, with .jpg
    added when it does not end so (a video's thumbnail is a JPEG, not an .mp4)."""
    return filename if filename.lower().endswith((".jpg", ".jpeg")) else f"{filename}.jpg"


def linked(photo: PhotoRecord) -> LinkedPhoto:
    """What a media link needs of a stored photo."""
    return LinkedPhoto(
        id=photo.id,
        filename=photo.filename,
        is_video=photo.kind is PhotoKind.VIDEO,
        is_hidden=photo.is_hidden,
        variant_types={k: v.content_type for k, v in photo.variants.items()},
    )


def linked_view(view: Any) -> LinkedPhoto:
    """What a media link needs of a photo as a message carries it (any field may be missing)."""
    variants = getattr(view, "variants", None) or {}
    return LinkedPhoto(
        id=view.id,
        filename=getattr(view, "filename", None) or view.id,
        is_video=getattr(view, "kind", None) == PhotoKind.VIDEO.value,
        is_hidden=bool(getattr(view, "is_hidden", False)),
        variant_types={k: getattr(v, "content_type", None) for k, v in variants.items()},
    )


class CategoryView(View):
    """A category of an event (photos are filed under one)."""

    id: str = Field(description="The category's id.")
    name: str = Field(description="Its display name.")


class EventView(View):
    """An event (a wedding, a match, a conference)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "ev_01JD9Z5Q0R3T6Y8U1I4O7P2A5S",
                    "name": "Anna & Ben",
                    "slug": "anna-and-ben",
                    "photo_cap": 5000,
                    "photo_count": 1204,
                    "categories": [{"id": "cat_01JD9Z5Q0R", "name": "Ceremony"}],
                    "status": "active",
                    "created_at": "2026-06-01T09:00:00Z",
                }
            ]
        }
    )

    id: str = Field(description="The event's id.")
    name: str = Field(description="Its display name.")
    slug: str = Field(description="Its URL slug (in the photos' URLs).")
    photo_cap: int | None = Field(description="How many photos it may hold; null: no cap.")
    photo_count: int = Field(description="How many photos it holds.")
    categories: list[CategoryView] = Field(description="Its categories.")
    status: EventStatus = Field(description="active, or archived (no new uploads).")
    created_at: str = Field(description="When it was created (ISO 8601, UTC).")
    guest_uploads_hidden: bool = Field(
        default=False,
        description="Photos that arrive through a guest upload link are hidden until shown.",
    )
    keep_duplicates: bool = Field(
        default=False,
        description="A file with the same bytes as a photo already in the event is stored "
        "again (off: it is answered with that photo, as duplicate_of).",
    )

    @classmethod
    def of(cls, event: EventRecord) -> EventView:
        return cls(
            id=event.id,
            name=event.name,
            slug=event.slug,
            photo_cap=event.photo_cap,
            photo_count=event.photo_count,
            categories=[CategoryView(id=c.id, name=c.name) for c in event.categories],
            status=event.status,
            created_at=ms_to_iso(event.created_ms) or "",
            guest_uploads_hidden=event.guest_uploads_hidden,
            keep_duplicates=event.keep_duplicates,
        )

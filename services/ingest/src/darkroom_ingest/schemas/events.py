"""``/v1/events``."""

from __future__ import annotations

import re
from typing import Annotated

from darkroom_kit.views import EventView
from pydantic import Field, field_validator

from darkroom_ingest.schemas.common import EventKeepsDuplicates, Page, PageQuery, Strict

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")

PhotoCap = Annotated[
    int | None,
    Field(ge=1, le=10_000_000, description="How many photos the event may hold; null: no cap."),
]


class CategoryIn(Strict):
    """A category to create with the event."""

    name: Annotated[str, Field(min_length=1, max_length=100, description="Its display name.")]


class EventCreate(Strict):
    """A new event."""

    model_config = Strict.model_config | {
        "json_schema_extra": {
            "examples": [
                {
                    "name": "Anna & Ben",
                    "slug": "anna-and-ben",
                    "photo_cap": 5000,
                    "categories": [{"name": "Ceremony"}, {"name": "Party"}],
                }
            ]
        }
    }

    name: Annotated[str, Field(min_length=1, max_length=200, description="Its display name.")]
    slug: Annotated[
        str,
        Field(
            min_length=1,
            max_length=64,
            description="Its URL name (a-z, 0-9, inner hyphens), unique: photo URLs carry it.",
        ),
    ]
    photo_cap: PhotoCap = None
    categories: Annotated[
        list[CategoryIn], Field(max_length=100, description="Categories to file photos under.")
    ] = []
    keep_duplicates: EventKeepsDuplicates = None

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError("a slug is lower-case letters, digits and inner hyphens")
        return value


class EventPatch(Strict):
    """Only the fields sent change; a null photo_cap removes the cap."""

    name: Annotated[
        str | None, Field(min_length=1, max_length=200, description="A new display name.")
    ] = None
    photo_cap: PhotoCap = None
    guest_uploads_hidden: Annotated[
        bool | None,
        Field(description="Hide the photos that arrive through a guest upload link."),
    ] = None
    keep_duplicates: EventKeepsDuplicates = None


class EventListQuery(PageQuery):
    slug: Annotated[str | None, Field(description="Only the event with this slug.")] = None


class EventPage(Page[EventView]):
    """A page of events."""

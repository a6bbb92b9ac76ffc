"""The event record (collection ``events``; upload-ingest writes it)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from darkroom_kit.statuses import EventStatus
from darkroom_kit.stored._base import Record


class StoredCategory(BaseModel):
    id: str
    name: str


class EventRecord(Record):
    name: str
    slug: str
    photo_cap: int | None = None
    photo_count: int = 0
    status: EventStatus = EventStatus.ACTIVE
    created_ms: int
    archived_ms: int | None = None
    categories: list[StoredCategory] = Field(default_factory=list)
    # Photos that arrive through a guest upload link are hidden until the owner shows them.
    guest_uploads_hidden: bool = False
    # A file equal to a photo already in the event is stored again (by default it is answered
    # with that photo).
    keep_duplicates: bool = False

    def category_ids(self) -> set[str]:
        return {c.id for c in self.categories}

    @property
    def accepts_uploads(self) -> bool:
        return self.status is EventStatus.ACTIVE


class Reservation(BaseModel):
    """Places a commit took in its event's ``photo_count``, held until ``until_ms``; its photos
    carry its id as their ``reservation_id``."""

    model_config = ConfigDict(extra="ignore")

    n: int = 0
    until_ms: int = 0


class Release(BaseModel):
    """A deleted photo whose place was already given back: when, and the reservation it was
    counted in (if any)."""

    model_config = ConfigDict(extra="ignore")

    at_ms: int = 0
    rid: str | None = None


class EventCount(Record):
    """What the reconciliation of an event's ``photo_count`` reads of it (darkroom_ingest's
    counting.py explains each field), read with :attr:`PROJECTION`. A model of its own rather
    than fields of :class:`EventRecord`: the projection leaves out what an event record needs,
    and these fields are only ever written by narrow updates, never with a whole record."""

    photo_count: int = 0
    # Missing until the first write that changes the count (a recount then matches on that).
    count_version: int | None = None
    reservations: dict[str, Reservation] = Field(default_factory=dict)
    # By photo id.
    count_released: dict[str, Release] = Field(default_factory=dict)
    reconcile_due_ms: int | None = None

    PROJECTION: ClassVar[dict[str, int]] = {
        "photo_count": 1,
        "count_version": 1,
        "reservations": 1,
        "count_released": 1,
        "reconcile_due_ms": 1,
    }

    @field_validator("reservations", "count_released", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

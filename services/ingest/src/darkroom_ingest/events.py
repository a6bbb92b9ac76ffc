"""Events: creating, reading, changing and archiving them, with who may see which."""

from __future__ import annotations

from typing import Any

from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.errors import ServiceError
from darkroom_kit.ids import new_id
from darkroom_kit.messaging import Envelope, Topology
from darkroom_kit.mongo import Database, Document
from darkroom_kit.outbox import Outbox
from darkroom_kit.problems import FieldError
from darkroom_kit.statuses import EventStatus
from darkroom_kit.stored.events import EventRecord, StoredCategory
from darkroom_kit.views import EventView

from darkroom_ingest.errors import (
    EVENT_NOT_FOUND,
    PHOTO_CAP_BELOW_COUNT,
    SLUG_TAKEN,
    VALIDATION_FAILED,
)
from darkroom_ingest.stores import Conflict, EventStore
from darkroom_ingest.tokens import Principal


def event_not_found(event_id: str) -> ServiceError:
    return EVENT_NOT_FOUND.error(f"No event with id {event_id!r}.")


def check_visible(principal: Principal, event_id: str) -> None:
    """A gallery token (bound to one event) sees no other event: it is not found, not refused."""
    if not principal.sees(event_id):
        raise event_not_found(event_id)


class EventService:
    def __init__(
        self, db: Database, publisher_outbox: Outbox, topology: Topology, grace_ms: int
    ) -> None:
        self.store = EventStore(db)
        self._outbox = publisher_outbox
        self._topology = topology
        self._grace_ms = grace_ms

    async def create(
        self,
        name: str,
        slug: str,
        photo_cap: int | None,
        categories: list[str],
        *,
        keep_duplicates: bool = False,
    ) -> EventRecord:
        event = EventRecord(
            id=new_id("ev"),
            name=name,
            slug=slug,
            photo_cap=photo_cap,
            photo_count=0,
            status=EventStatus.ACTIVE,
            created_ms=now_ms(),
            categories=[StoredCategory(id=new_id("cat"), name=c) for c in categories],
            keep_duplicates=keep_duplicates,
        )
        doc = event.document()
        del doc["archived_ms"]  # set when it is archived
        try:
            await self.store.create(doc)
        except Conflict:
            raise SLUG_TAKEN.error(
                f"Another event uses the slug {slug!r}.",
                errors=[FieldError("/slug", "choose another slug", "slug_taken")],
            ) from None
        return event

    async def page(
        self, principal: Principal, limit: int, offset: int, slug: str | None
    ) -> tuple[list[EventRecord], int]:
        docs, total = await self.store.page(limit, offset, slug=slug, event_id=principal.event_id)
        return [EventRecord.of(d) for d in docs], total

    async def get(self, principal: Principal, event_id: str) -> EventRecord:
        check_visible(principal, event_id)
        event = EventRecord.maybe(await self.store.get(event_id))
        if event is None:
            raise event_not_found(event_id)
        return event

    async def by_slug(self, principal: Principal, slug: str) -> EventRecord | None:
        event = EventRecord.maybe(await self.store.by_slug(slug))
        if event is None or not principal.sees(event.id):
            return None
        return event

    async def patch(self, event: EventRecord, fields: dict[str, Any]) -> EventRecord:
        """Change the fields given; a cap never goes below the photos held (checked in the same
        write)."""
        for name in ("name", "guest_uploads_hidden", "keep_duplicates"):
            if name in fields and fields[name] is None:
                raise VALIDATION_FAILED.error(
                    errors=[FieldError(f"/{name}", "may not be null", "required")]
                )
        if "name" in fields and fields["name"] is None:
            raise VALIDATION_FAILED.error(
                errors=[FieldError("/name", "an event needs a name", "required")]
            )
        if not fields:
            return event
        updated = await self.store.patch(event.id, fields)
        if updated is None:
            current = EventRecord.maybe(await self.store.get(event.id)) or event
            raise PHOTO_CAP_BELOW_COUNT.error(
                f"The event holds {current.photo_count} photos; a cap must be at least that.",
                errors=[FieldError("/photo_cap", f"at least {current.photo_count}", "too_small")],
            )
        return EventRecord.of(updated)

    async def archive(self, event: EventRecord) -> EventRecord:
        """No new uploads, its photos stay; event.archived is announced once (in the same write
        as the status, through the outbox)."""

        def message(doc: Document) -> Envelope:
            view = EventView.of(EventRecord.of(doc))
            return Envelope.new(records.EVENT_ARCHIVED, {"event": view.model_dump(mode="json")})

        archived = await self.store.archive(
            event.id, message, self._outbox.push, self._topology.events, self._grace_ms
        )
        if archived is None:  # already archived: the same answer, nothing announced twice
            return EventRecord.maybe(await self.store.get(event.id)) or event
        await self._outbox.flush(self.store.col, event.id, self._outbox.pending_of(archived))
        return EventRecord.of(archived)

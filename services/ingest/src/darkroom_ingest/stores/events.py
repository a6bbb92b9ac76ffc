"""Events (collection ``events``): creation, the photo count's reservations, archiving."""

from __future__ import annotations

from collections.abc import Callable

from darkroom_kit import outbox, records
from darkroom_kit.clock import now_ms
from darkroom_kit.messaging import Envelope
from darkroom_kit.mongo import Database, Document
from darkroom_kit.statuses import EventStatus
from darkroom_kit.stored.events import EventRecord
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from darkroom_ingest.stores.common import (
    NEWEST_FIRST,
    CapExceeded,
    Conflict,
    EventClosed,
    Push,
    page_of,
)

# When a photo of the event last went away (deleted, or hidden), written after the photo's own
# write: an archive whose photos were read before it may hold one (Jobs.archive_whole).
PHOTOS_REMOVED = "photos_removed_ms"
# How many times one did: an archive found whole at one count is whole until the next.
REMOVALS = "photo_removals"


class EventStore:
    def __init__(self, db: Database) -> None:
        self.col = db[records.EVENTS]

    async def create(self, doc: Document) -> Document:
        try:
            await self.col.insert_one(doc)
        except DuplicateKeyError as exc:
            raise Conflict("slug") from exc
        return doc

    async def get(self, event_id: str) -> Document | None:
        return await self.col.find_one({"_id": event_id}, outbox.WITHOUT_OUTBOXES)

    async def page(
        self, limit: int, offset: int, slug: str | None = None, event_id: str | None = None
    ) -> tuple[list[Document], int]:
        query: Document = {}
        if slug is not None:
            query["slug"] = slug
        if event_id is not None:
            query["_id"] = event_id
        return await page_of(self.col, query, outbox.WITHOUT_OUTBOXES, NEWEST_FIRST, limit, offset)

    async def by_slug(self, slug: str) -> Document | None:
        return await self.col.find_one({"slug": slug}, outbox.WITHOUT_OUTBOXES)

    async def reserve_photos(
        self, event: EventRecord | Document, n: int, reservation_id: str, until_ms: int
    ) -> None:
        """Count ``n`` more photos against the event's cap, atomically: a conditional update, never
        count-then-insert. The places are a reservation, in the same write, that a reconciliation
        gives back once it expires (darkroom_ingest.counting). Raises :class:`CapExceeded`, or
        :class:`EventClosed` once it is archived (in the same condition: an upload that began
        before the archive cannot complete after it)."""
        current = event if isinstance(event, EventRecord) else EventRecord.of(event)
        ops: Document = {
            "$inc": {"photo_count": n, "count_version": 1},
            "$set": {f"reservations.{reservation_id}": {"n": n, "until_ms": until_ms}},
            "$min": {"reconcile_due_ms": until_ms},
        }
        for _ in range(5):
            cap = current.photo_cap
            query: Document = {"_id": current.id, "status": {"$ne": EventStatus.ARCHIVED}}
            if cap is None:
                query["photo_cap"] = None
            else:
                query.update({"photo_cap": cap, "photo_count": {"$lte": cap - n}})
            updated = await self.col.find_one_and_update(
                query, ops, {"_id": 1}, return_document=ReturnDocument.AFTER
            )
            if updated is not None:
                return
            fresh = EventRecord.maybe(await self.get(current.id))
            if fresh is None:
                raise LookupError(current.id)
            if fresh.status is EventStatus.ARCHIVED:
                raise EventClosed(current.id)
            if cap is not None and fresh.photo_cap == cap:
                raise CapExceeded(cap, fresh.photo_count)
            current = fresh  # the cap changed under us: decide again with the new one
        raise CapExceeded(current.photo_cap or 0, current.photo_count)

    async def patch(self, event_id: str, fields: Document) -> Document | None:
        query: Document = {"_id": event_id}
        cap = fields.get("photo_cap")
        if cap is not None:
            # Never below what the event already holds (checked in the same write).
            query["photo_count"] = {"$lte": cap}
        return await self.col.find_one_and_update(
            query, {"$set": fields}, outbox.WITHOUT_OUTBOXES, return_document=ReturnDocument.AFTER
        )

    async def archive(
        self,
        event_id: str,
        message_for: Callable[[Document], Envelope],
        push: Push,
        exchange: str,
        grace_ms: int,
    ) -> Document | None:
        """Archive once, with its event.archived in the same write (``push``: the writer's
        outbox). None if already archived."""
        current = EventRecord.maybe(await self.get(event_id))
        if current is None or current.status is EventStatus.ARCHIVED:
            return None
        archived = current.model_copy(update={"status": EventStatus.ARCHIVED})
        ops = push(exchange, [message_for(archived.document())], grace_ms)
        ops["$set"].update({"status": EventStatus.ARCHIVED, "archived_ms": now_ms()})
        return await self.col.find_one_and_update(
            {"_id": event_id, "status": {"$ne": EventStatus.ARCHIVED}},
            ops,
            return_document=ReturnDocument.AFTER,
        )

    async def settle_reservation(
        self, event_id: str, reservation_id: str, now: int, unused: int = 0
    ) -> bool:
        """A commit's photos are all in: its reservation becomes their count (the count itself
        does not move, but for the ``unused`` places of files that turned out to be copies).
        False if the reservation had already expired: a recount may have missed photos that
        landed after it, so the caller recounts."""
        ops: Document = {"$unset": {f"reservations.{reservation_id}": ""}}
        if unused:
            ops["$inc"] = {"photo_count": -unused, "count_version": 1}
        result = await self.col.update_one(
            {"_id": event_id, f"reservations.{reservation_id}.until_ms": {"$gt": now}}, ops
        )
        return result.matched_count == 1

    async def abandon_reservation(self, event_id: str, reservation_id: str, until_ms: int) -> None:
        """A commit failed: its reservation expires at ``until_ms`` and the recount then counts
        what landed. Not given back at once: an insert that timed out here may land later."""
        await self.col.update_one(
            {"_id": event_id, f"reservations.{reservation_id}": {"$exists": True}},
            {
                "$set": {f"reservations.{reservation_id}.until_ms": until_ms},
                "$min": {"reconcile_due_ms": until_ms},
                "$inc": {"count_version": 1},
            },
        )

    async def release_photo(
        self, event_id: str, photo_id: str, reservation_id: str | None, due_ms: int
    ) -> None:
        """Give back a deleted photo's place, once: the release is recorded in the same write, so
        a repeat (the relay finishing a deletion) does nothing."""
        now = now_ms()
        await self.col.update_one(
            {"_id": event_id, f"count_released.{photo_id}": {"$exists": False}},
            {
                "$inc": {"photo_count": -1, "count_version": 1, REMOVALS: 1},
                "$set": {f"count_released.{photo_id}": {"at_ms": now, "rid": reservation_id}},
                "$min": {"reconcile_due_ms": due_ms},
                # In the release's write: the relay repeats it until it is done.
                "$max": {PHOTOS_REMOVED: now},
            },
        )

    async def removals(self, event_id: str) -> tuple[int | None, int] | None:
        """(when a photo of the event last went away, how many times one did); None when the
        event is not there."""
        doc = await self.col.find_one({"_id": event_id}, {PHOTOS_REMOVED: 1, REMOVALS: 1})
        if doc is None:
            return None
        removed_ms = doc.get(PHOTOS_REMOVED)
        return (removed_ms if isinstance(removed_ms, int) else None), int(doc.get(REMOVALS, 0))

    async def photo_hidden(self, event_id: str) -> None:
        await self.col.update_one(
            {"_id": event_id}, {"$max": {PHOTOS_REMOVED: now_ms()}, "$inc": {REMOVALS: 1}}
        )

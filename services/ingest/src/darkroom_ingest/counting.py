"""An event's ``photo_count`` follows its photos, without multi-document transactions.

The count is what the cap is checked against, so every race must leave it too high (the cap
briefly reached early, healed by the next pass), never too low (the cap exceeded). The event
document holds, besides ``photo_count``:

- ``reservations.<rid>: {n, until_ms}``: places taken by a commit in the same write as the ``$inc``;
  its photos carry ``reservation_id``. A commit that finishes removes its reservation; one that
  dies leaves it to expire.
- ``count_released.<photo_id>: {at_ms, rid}``: deletions already taken off the count, written in the
  same write as the ``$inc -1``, so giving a place back is idempotent and a recount knows it.
- ``count_version``: incremented by every write that changes the count or the reservations'
  expiries, so a recount writes only if nothing of that kind happened while it counted.
- ``reconcile_due_ms``: when the event next needs a recount (the earliest reservation expiry or
  pending prune); indexed, so the periodic pass finds only those events.

A recount sets ``photo_count`` = photos held (those of live reservations left out, deletions
already given back left out) + places of live reservations (minus their released photos).
Photos landing or leaving while it counts do not change the version, and the formula is exact
for them; a reservation or release that does change it makes the recount skip.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from darkroom_kit import outbox, records
from darkroom_kit.clock import now_ms
from darkroom_kit.mongo import Database, Document
from darkroom_kit.stored import Record
from darkroom_kit.stored.events import EventCount
from darkroom_kit.stored.photos import PhotoRecord
from prometheus_client import Counter
from pymongo import ASCENDING

log = logging.getLogger(__name__)

COUNT_CORRECTIONS: web.AppKey[Counter] = web.AppKey("photo_count_corrections", Counter)

# A released photo still there is read for the reservation it holds; its variants and outbox
# are of no use to the recount.
PHOTO_FIELDS = {"variants": 0, **outbox.WITHOUT_OUTBOXES}


@dataclass(frozen=True)
class Correction:
    event_id: str
    before: int
    after: int
    expired: int


class PhotoCounts:
    """Reconciles events' ``photo_count`` with their photos (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        reservation_ttl_ms: int = 120_000,
        settle_ms: int = 10_000,
        corrections: Counter | None = None,
        batch: int = 100,
    ) -> None:
        self.events = db[records.EVENTS]
        self.photos = db[records.PHOTOS]
        self.reservation_ttl_ms = reservation_ttl_ms
        # A failed commit's reservation is kept this long before a recount drops it: a write
        # that timed out on our side may still land on the server.
        self.settle_ms = settle_ms
        self._corrections = corrections
        self._batch = batch
        self.swept_all = False

    async def reconcile(self, event_id: str, attempts: int = 3) -> Correction | None:
        """Recount one event. None when it is unknown, or when its count kept changing under the
        recount (it is then left due, for the next pass)."""
        for _ in range(attempts):
            event = EventCount.maybe(
                await self.events.find_one({"_id": event_id}, EventCount.PROJECTION)
            )
            if event is None:
                return None
            correction = await self._recount(event)
            if correction is not None:
                return correction
        await self.events.update_one(
            {"_id": event_id}, {"$min": {"reconcile_due_ms": now_ms() + self.settle_ms}}
        )
        return None

    async def _recount(self, event: EventCount) -> Correction | None:
        event_id = event.id
        version = event.count_version
        now = now_ms()
        reservations = event.reservations
        live = {rid: r.n for rid, r in reservations.items() if r.until_ms > now}
        expired = [rid for rid in reservations if rid not in live]
        released = event.count_released
        held = await self.photos.count_documents(
            {"event_id": event_id, "reservation_id": {"$nin": list(live)}}
        )
        still_there: dict[str, str | None] = {}
        if released:
            cursor = self.photos.find(
                {"_id": {"$in": list(released)}, "event_id": event_id}, PHOTO_FIELDS
            )
            photos = [PhotoRecord.of(d) async for d in cursor]
            still_there = {photo.id: photo.reservation_id for photo in photos}
        reserved = sum(live.values())
        prune: list[str] = []
        due = [reservations[rid].until_ms for rid in live]
        for photo_id, entry in released.items():
            rid = still_there.get(photo_id, entry.rid)
            if rid in live:
                reserved -= 1  # its reservation still holds its place, which was given back
                continue
            if photo_id in still_there:
                held -= 1  # counted above, but already given back
                due.append(now + self.reservation_ttl_ms)
            elif entry.at_ms <= now - self.reservation_ttl_ms:
                # Kept this long so that a late, duplicate release of the same photo still
                # finds it and does nothing.
                prune.append(photo_id)
            else:
                due.append(entry.at_ms + self.reservation_ttl_ms)
        after = held + reserved
        before = event.photo_count
        next_due = min(due) if due else None
        if (before, next_due) == (after, event.reconcile_due_ms) and not expired + prune:
            return Correction(event_id, before, after, 0)  # nothing to write (the usual case)
        update: Document = {"$set": {"photo_count": after}, "$inc": {"count_version": 1}}
        unset: Document = {f"reservations.{rid}": "" for rid in expired}
        unset.update({f"count_released.{photo_id}": "" for photo_id in prune})
        if next_due is not None:
            update["$set"]["reconcile_due_ms"] = next_due
        else:
            unset["reconcile_due_ms"] = ""
        if unset:
            update["$unset"] = unset
        # A bare null does not match a missing field on every server the code runs against.
        query: Document = {"_id": event_id}
        query["count_version"] = version if version is not None else {"$exists": False}
        result = await self.events.update_one(query, update)
        if result.matched_count == 0:
            return None
        if before != after:
            log.warning(
                "photo_count corrected",
                extra={
                    "event_id": event_id,
                    "before": before,
                    "after": after,
                    "expired_reservations": len(expired),
                },
            )
            if self._corrections is not None:
                self._corrections.inc()
        return Correction(event_id, before, after, len(expired))

    async def _ids(self, query: Document, sort_key: str, limit: int) -> list[str]:
        cursor = self.events.find(query, {"_id": 1}).sort(sort_key, ASCENDING).limit(limit)
        return [Record.of(d).id async for d in cursor]

    async def _pages_of_all(self) -> AsyncIterator[list[str]]:
        after: str | None = None
        while True:
            query: Document = {} if after is None else {"_id": {"$gt": after}}
            ids = await self._ids(query, "_id", self._batch)
            if not ids:
                return
            yield ids
            after = ids[-1]

    async def reconcile_all(self) -> int:
        """Recount every event, a page at a time (on start: heals drift of any origin, including
        counts written before reservations existed). Returns how many were corrected."""
        corrected = 0
        async for ids in self._pages_of_all():
            corrected += await self._reconcile_each(ids)
        return corrected

    async def reconcile_due(self, limit: int = 500) -> int:
        """Recount the events whose reservations expired or whose releases wait to be pruned.
        A bounded list per pass: an event that stays busy is left due for the next one."""
        ids = await self._ids({"reconcile_due_ms": {"$lte": now_ms()}}, "reconcile_due_ms", limit)
        return await self._reconcile_each(ids)

    async def _reconcile_each(self, event_ids: list[str]) -> int:
        """Recount each; how many counts changed."""
        corrected = 0
        for event_id in event_ids:
            correction = await self.reconcile(event_id)
            corrected += correction is not None and correction.before != correction.after
        return corrected

    async def run_pass(self) -> int:
        """The first pass of a process recounts everything, later ones what is due."""
        if not self.swept_all:
            corrected = await self.reconcile_all()
            self.swept_all = True
            return corrected
        return await self.reconcile_due()

"""Photo use cases that span MongoDB, S3 and RabbitMQ: committing a batch and deleting."""

from __future__ import annotations

import asyncio
import logging

from darkroom_kit import outbox, records
from darkroom_kit.clock import now_ms
from darkroom_kit.ids import new_id
from darkroom_kit.messaging import Envelope, Topology
from darkroom_kit.mongo import Database, Document
from darkroom_kit.outbox import Outbox
from darkroom_kit.problems import Problem
from darkroom_kit.storage import S3ObjectStore, StorageError

from darkroom_ingest.counting import PhotoCounts
from darkroom_ingest.stores import CapExceeded, EventStore, PhotoStore
from darkroom_ingest.uploads import StoredFile

log = logging.getLogger(__name__)


def ensure_accepts_uploads(event: Document) -> None:
    """An archived event takes no photos; a full one says so before any byte is sent.

    Only a fast early answer: the cap itself is enforced when photos are counted in."""
    if event.get("status") == "archived":
        raise Problem(409, "event_archived", "The event is archived", "It takes no new photos.")
    cap, count = event.get("photo_cap"), event.get("photo_count", 0)
    if cap is not None and count >= cap:
        raise Problem(
            400,
            "photo_cap_exceeded",
            "The event's photo cap is reached",
            f"The event allows {cap} photos and has {count}.",
            extra={"photo_cap": cap, "photo_count": count},
        )


class PhotoService:
    def __init__(
        self,
        db: Database,
        store: S3ObjectStore,
        outbox_: Outbox,
        topology: Topology,
        base_url: str,
        grace_ms: int,
        counts: PhotoCounts | None = None,
    ) -> None:
        self.photos = PhotoStore(db)
        self.events = EventStore(db)
        self.counts = counts or PhotoCounts(db)
        self._store = store
        self._outbox = outbox_
        self._topology = topology
        self._base_url = base_url
        self._grace_ms = grace_ms

    async def commit_batch(
        self,
        event: Document,
        files: list[StoredFile],
        category_id: str | None,
        *,
        request_key: str | None = None,
    ) -> list[Document]:
        """Count the files against the cap, write their records (each with its ``photo.uploaded``
        in the same write), then publish. Raises Problem (and deletes the objects) on a refusal.

        The places are reserved first; a process killed before the photos are in leaves a
        reservation that expires and is given back by the reconciliation (counting.py).

        ``request_key`` (the request's Idempotency-Key) is stored on every photo: a repeat of a
        request whose process died after its photos landed, but before its answer was kept,
        answers those photos instead of storing the files a second time."""
        landed = await self._landed(event["_id"], files, request_key)
        if landed:
            await self._discard([files[i] for i in landed])
            log.info(
                "photos of an interrupted request found; not stored again",
                extra={"event_id": event["_id"], "photo_ids": [d["_id"] for d in landed.values()]},
            )
        fresh = [f for i, f in enumerate(files) if i not in landed]
        docs = await self._commit_new(event, fresh, category_id, request_key) if fresh else []
        new_docs = iter(docs)
        return [landed[i] if i in landed else next(new_docs) for i in range(len(files))]

    async def _landed(
        self, event_id: str, files: list[StoredFile], request_key: str | None
    ) -> dict[int, Document]:
        """The photos an earlier run of the same request stored, by the position of the file
        they stand for (same name and content; a name given twice is matched in order)."""
        if request_key is None:
            return {}
        earlier: dict[tuple[str, str | None], list[Document]] = {}
        cursor = self.photos.col.find(
            {"event_id": event_id, "request_key": request_key, "status": {"$ne": "deleting"}},
            {outbox.OUTBOX: 0},
        ).sort("_id", 1)
        async for doc in cursor:
            earlier.setdefault((doc["original_filename"], doc["sha256"]), []).append(doc)
        found: dict[int, Document] = {}
        for i, f in enumerate(files):
            same = earlier.get((f.original_filename, f.sha256))
            if same:
                found[i] = same.pop(0)
        return found

    async def _commit_new(
        self,
        event: Document,
        files: list[StoredFile],
        category_id: str | None,
        request_key: str | None,
    ) -> list[Document]:
        reservation = new_id("rsv")
        try:
            await self.events.reserve_photos(
                event, len(files), reservation, now_ms() + self.counts.reservation_ttl_ms
            )
        except CapExceeded as exc:
            await self._discard(files)
            raise Problem(
                400,
                "photo_cap_exceeded",
                "The event's photo cap would be exceeded",
                f"The event allows {exc.cap} photos and has {exc.count}; this batch has "
                f"{len(files)}. Nothing of it was kept.",
                extra={"photo_cap": exc.cap, "photo_count": exc.count},
            ) from None
        now = now_ms()
        docs: list[Document] = []
        for f in files:
            doc: Document = {
                "_id": f.photo_id,
                "event_id": event["_id"],
                "event_slug": event["slug"],
                "filename": f.filename,
                "original_filename": f.original_filename,
                "content_type": f.kind.content_type,
                "kind": "video" if f.kind.content_type.startswith("video/") else "image",
                "size": f.size,
                "sha256": f.sha256,
                "original_key": f.key,
                "category_id": category_id,
                "status": "uploaded",
                "status_reason": None,
                "width": None,
                "height": None,
                "captured_at_ms": None,
                "variants": {},
                "created_ms": now,
                "reservation_id": reservation,
            }
            if request_key is not None:
                doc["request_key"] = request_key
            docs.append(doc)
        events_exchange = self._topology.events

        def with_message(doc: Document) -> None:
            message = Envelope.new(
                records.PHOTO_UPLOADED,
                {
                    "photo": records.photo_public(doc, self._base_url),
                    "original_key": doc["original_key"],
                },
            )
            doc.update(outbox.fields(events_exchange, [message], self._grace_ms))

        try:
            await self.photos.insert_unique(docs, with_message)
        except BaseException:
            await self._abandon(event["_id"], reservation)
            # Not discarded: some records may have landed (or may still land: a write that timed
            # out can complete on the server), and deleting their objects would leave photos
            # without bytes. The objects of those that never land are orphans, which the sweep
            # removes after its grace period (orphans.py).
            log.warning(
                "photo records not written; objects left to the orphan sweep",
                extra={"event_id": event["_id"], "photo_ids": [f.photo_id for f in files][:20]},
            )
            raise
        await self._settle(event["_id"], reservation)
        # Confirms pipelined across the batch: one broker round trip, not one per file.
        await asyncio.gather(
            *(self._outbox.flush(self.photos.col, d["_id"], outbox.pending_of(d)) for d in docs)
        )
        return docs

    async def _abandon(self, event_id: str, reservation: str) -> None:
        try:
            await self.events.abandon_reservation(
                event_id, reservation, now_ms() + self.counts.settle_ms
            )
        except Exception:  # the reservation then expires at its TTL; the insert's error counts
            log.warning("could not abandon a reservation", exc_info=True)

    async def _settle(self, event_id: str, reservation: str) -> None:
        """The photos are in: a failure from here on must not fail the upload. Left alone, the
        reservation expires and the recount counts the photos."""
        try:
            if await self.events.settle_reservation(event_id, reservation, now_ms()):
                return
            # Slower than the TTL: a recount may have given the places back before the photos
            # landed, so count again now that they are all in.
            log.warning(
                "reservation expired before its photos landed; recounting",
                extra={"event_id": event_id, "reservation_id": reservation},
            )
            await self.counts.reconcile(event_id)
        except Exception:
            log.warning("could not settle a reservation", exc_info=True)

    async def _discard(self, files: list[StoredFile]) -> None:
        try:
            await self._store.delete_many([f.key for f in files])
        except StorageError:
            log.warning("could not delete objects of a refused batch", exc_info=True)

    async def delete(self, photo: Document) -> bool:
        """Tombstone, then remove objects and record. ``photo.deleted`` is durable from the first
        write on, so a crash anywhere after it is finished by the relay."""
        message = Envelope.new(
            records.PHOTO_DELETED,
            {
                "photo": records.photo_public(photo, self._base_url),
            },
        )
        marked = await self.photos.mark_deleting(
            photo["_id"], message, self._topology.events, self._grace_ms
        )
        if marked is None:
            return False
        # Before the flush: a photo.deleted still pending means the place may not be given back
        # yet, and the relay that publishes it finishes the deletion (finish_deletion).
        await self._release(marked)
        await self._outbox.flush(self.photos.col, photo["_id"], outbox.pending_of(marked))
        await self._finish_deletion(marked, released=True)
        return True

    async def _release(self, doc: Document) -> None:
        await self.events.release_photo(
            doc["event_id"],
            doc["_id"],
            doc.get("reservation_id"),
            now_ms() + self.counts.reservation_ttl_ms,
        )

    async def finish_deletion(self, doc: Document) -> None:
        """Remove a tombstoned photo's objects and record (the relay calls it for leftovers)."""
        await self._finish_deletion(doc, released=False)

    async def _finish_deletion(self, doc: Document, *, released: bool) -> None:
        if doc.get("status") != "deleting":
            return
        # Re-read: a thumbnail may have been stored after the tombstone was read.
        fresh = await self.photos.col.find_one({"_id": doc["_id"]})
        if fresh is None:
            return  # removed already (its place given back before that)
        if not released:
            # A deleter killed after the tombstone: give the place back (once) before the
            # record goes, since after that nothing tells that it was held.
            await self._release(fresh)
        if outbox.pending_of(fresh):
            return  # its photo.deleted is not out yet; the relay comes back
        try:
            await self._store.delete_many(records.photo_object_keys(fresh))
        except StorageError:
            # The record stays as a tombstone (invisible to the API) and the relay comes back
            # for it: deletion is accepted now and completed once the store answers.
            log.warning("object deletion failed; will retry", extra={"photo_id": doc["_id"]})
            await self.photos.col.update_one(
                {"_id": doc["_id"]}, {"$set": {outbox.OUTBOX_DUE: now_ms() + self._grace_ms}}
            )
            return
        await self.photos.remove(doc["_id"])

"""Photo use cases that span MongoDB, S3 and RabbitMQ: committing a batch and deleting."""

from __future__ import annotations

import asyncio
import logging

from darkroom_kit import outbox, records
from darkroom_kit.clock import now_ms
from darkroom_kit.messaging import Envelope, Topology
from darkroom_kit.mongo import Database, Document
from darkroom_kit.outbox import Outbox
from darkroom_kit.problems import Problem
from darkroom_kit.storage import S3ObjectStore, StorageError

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
    ) -> None:
        self.photos = PhotoStore(db)
        self.events = EventStore(db)
        self._store = store
        self._outbox = outbox_
        self._topology = topology
        self._base_url = base_url
        self._grace_ms = grace_ms

    async def commit_batch(
        self, event: Document, files: list[StoredFile], category_id: str | None
    ) -> list[Document]:
        """Count the files against the cap, write their records (each with its ``photo.uploaded``
        in the same write), then publish. Raises Problem (and deletes the objects) on a refusal."""
        try:
            await self.events.reserve_photos(event, len(files))
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
            }
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
        except Exception:
            await self.events.release_photos(event["_id"], len(files))
            await self._discard(files)
            raise
        # Confirms pipelined across the batch: one broker round trip, not one per file.
        await asyncio.gather(
            *(self._outbox.flush(self.photos.col, d["_id"], outbox.pending_of(d)) for d in docs)
        )
        return docs

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
        await self.events.release_photos(photo["event_id"], 1)
        await self._outbox.flush(self.photos.col, photo["_id"], outbox.pending_of(marked))
        await self.finish_deletion(marked)
        return True

    async def finish_deletion(self, doc: Document) -> None:
        """Remove a tombstoned photo's objects and record (the relay calls it for leftovers)."""
        if doc.get("status") != "deleting":
            return
        # Re-read: a thumbnail may have been stored after the tombstone was read.
        fresh = await self.photos.col.find_one({"_id": doc["_id"]}) or doc
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

"""Photo use cases that span MongoDB, S3 and RabbitMQ: committing a batch and deleting."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from darkroom_kit import outbox, records
from darkroom_kit.clock import now_ms
from darkroom_kit.ids import new_id
from darkroom_kit.messaging import Envelope, Topology
from darkroom_kit.mongo import Database, Document
from darkroom_kit.outbox import Outbox
from darkroom_kit.statuses import PhotoKind, PhotoStatus
from darkroom_kit.storage import S3ObjectStore, StorageError
from darkroom_kit.stored.events import EventRecord
from darkroom_kit.stored.photos import PhotoRecord
from darkroom_kit.views import PhotoView

from darkroom_ingest import errors
from darkroom_ingest.counting import PhotoCounts
from darkroom_ingest.duplicates import Duplicates, content_key
from darkroom_ingest.stores import CapExceeded, EventClosed, EventStore, PhotoStore
from darkroom_ingest.uploads import StoredFile

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Committed:
    """What a file became: a new photo, or (``duplicate``) a copy of ``photo``, already there."""

    photo: PhotoRecord
    duplicate: bool = False


def ensure_accepts_uploads(event: EventRecord) -> None:
    """An archived event takes no photos; a full one says so before any byte is sent.

    Only a fast early answer: the cap itself is enforced when photos are counted in."""
    if not event.accepts_uploads:
        raise errors.EVENT_ARCHIVED.error("It takes no new photos.")
    cap, count = event.photo_cap, event.photo_count
    if cap is not None and count >= cap:
        raise errors.PHOTO_CAP_REACHED.error(
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
        self.duplicates = Duplicates(db, store)
        self._store = store
        self._outbox = outbox_
        self._topology = topology
        self._base_url = base_url
        self._grace_ms = grace_ms

    @property
    def outbox(self) -> Outbox:
        """upload-ingest's outbox, which photo records carry their messages in."""
        return self._outbox

    async def commit_batch(
        self,
        event: EventRecord,
        files: list[StoredFile],
        category_id: str | None,
        *,
        request_key: str | None = None,
        keep_duplicates: bool | None = None,
        discard_duplicates: bool = True,
    ) -> list[Committed]:
        """Count the files against the cap, write their records (each with its ``photo.uploaded``
        in the same write), then publish. Raises ServiceError (and deletes the objects) on a
        refusal.

        The places are reserved first; a process killed before the photos are in leaves a
        reservation that expires and is given back by the reconciliation (counting.py).

        ``request_key`` (the request's Idempotency-Key) is stored on every photo: a repeat of a
        request whose process died after its photos landed, but before its answer was kept,
        answers those photos instead of storing the files a second time.

        Unless duplicates are kept (``keep_duplicates``, else the event's setting), a file whose
        bytes equal a photo's in the event is answered with that photo: no record, no place, no
        ``photo.uploaded``, and its object is deleted (unless ``discard_duplicates`` is False:
        the caller records the outcome first, then deletes it)."""
        landed = await self._landed(event.id, files, request_key)
        if landed:
            await self._discard([files[i] for i in landed])
            log.info(
                "photos of an interrupted request found; not stored again",
                extra={"event_id": event.id, "photo_ids": [p.id for p in landed.values()]},
            )
        outcomes: dict[int, Committed] = {i: Committed(p) for i, p in landed.items()}
        keep = event.keep_duplicates if keep_duplicates is None else keep_duplicates
        fresh = {i: f for i, f in enumerate(files) if i not in landed}
        if not keep and fresh:
            digested = await self.duplicates.with_digests(event.id, list(fresh.values()))
            fresh = dict(zip(fresh, digested, strict=True))
        for last in (False, False, True):
            if not fresh:
                break
            done = await self._commit_fresh(event, fresh, category_id, request_key, keep)
            # A photo deleted since it was found would leave the copy answered by nothing: the
            # copy is committed again (the deletion freed its content). Checked before any copy
            # is dropped; a deletion after that is one after the answer.
            gone = set() if last else await self.duplicates.gone(done)
            outcomes.update({i: c for i, c in done.items() if c.photo.id not in gone})
            fresh = {i: f for i, f in fresh.items() if i not in outcomes}
        copies = [files[i] for i, c in outcomes.items() if c.duplicate and i not in landed]
        if copies:
            log.info(
                "duplicates not stored",
                extra={
                    "event_id": event.id,
                    "duplicate_of": [c.photo.id for c in outcomes.values() if c.duplicate][:20],
                },
            )
            if discard_duplicates:
                await self._discard(copies)
        return [outcomes[i] for i in range(len(files))]

    async def _commit_fresh(
        self,
        event: EventRecord,
        fresh: dict[int, StoredFile],
        category_id: str | None,
        request_key: str | None,
        keep: bool,
    ) -> dict[int, Committed]:
        """What each file (by position) became: a copy of a photo there, or a new photo."""
        outcomes: dict[int, Committed] = {}
        if not keep:
            earlier = await self.duplicates.earlier(
                event.id, [f.sha256 for f in fresh.values() if f.sha256 is not None]
            )
            for i, f in fresh.items():
                if f.sha256 in earlier:
                    outcomes[i] = Committed(earlier[f.sha256], duplicate=True)
        new = {i: f for i, f in fresh.items() if i not in outcomes}
        if new:
            stored = await self._commit_new(
                event, list(new.values()), category_id, request_key, refuse_copies=not keep
            )
            outcomes.update(zip(new, stored, strict=True))
        return outcomes

    async def _landed(
        self, event_id: str, files: list[StoredFile], request_key: str | None
    ) -> dict[int, PhotoRecord]:
        """The photos an earlier run of the same request stored, by the position of the file
        they stand for (same name and content; a name given twice is matched in order)."""
        if request_key is None:
            return {}
        earlier: dict[tuple[str | None, str | None], list[PhotoRecord]] = {}
        cursor = self.photos.col.find(
            {
                "event_id": event_id,
                "request_key": request_key,
                "status": {"$ne": PhotoStatus.DELETING},
            },
            outbox.WITHOUT_OUTBOXES,
        ).sort("_id", 1)
        async for doc in cursor:
            photo = PhotoRecord.of(doc)
            earlier.setdefault((photo.original_filename, photo.sha256), []).append(photo)
        found: dict[int, PhotoRecord] = {}
        for i, f in enumerate(files):
            same = earlier.get((f.original_filename, f.sha256))
            if same:
                found[i] = same.pop(0)
        return found

    async def _commit_new(
        self,
        event: EventRecord,
        files: list[StoredFile],
        category_id: str | None,
        request_key: str | None,
        *,
        refuse_copies: bool,
    ) -> list[Committed]:
        reservation = new_id("rsv")
        try:
            await self.events.reserve_photos(
                event, len(files), reservation, now_ms() + self.counts.reservation_ttl_ms
            )
        except CapExceeded as exc:
            await self._discard(files)
            raise errors.PHOTO_CAP_WOULD_BE_EXCEEDED.error(
                f"The event allows {exc.cap} photos and has {exc.count}; this batch has "
                f"{len(files)}. Nothing of it was kept.",
                extra={"photo_cap": exc.cap, "photo_count": exc.count},
            ) from None
        except EventClosed:
            await self._discard(files)
            raise errors.EVENT_ARCHIVED.error(
                "It was archived while the files arrived; nothing was kept."
            ) from None
        now = now_ms()
        docs = [
            _first_document(event, f, category_id, reservation, request_key, now, refuse_copies)
            for f in files
        ]
        events_exchange = self._topology.events

        def with_message(doc: Document) -> None:
            photo = PhotoRecord.of(doc)
            message = Envelope.new(
                records.PHOTO_UPLOADED,
                {"photo": PhotoView.of(photo, self._base_url).model_dump(mode="json")},
            )
            doc.update(self._outbox.fields(events_exchange, [message], self._grace_ms))

        try:
            copies = await self.photos.insert_unique(docs, with_message, self.duplicates.holder)
        except BaseException:
            await self._abandon(event.id, reservation)
            # Not discarded: some records may have landed (or may still land: a write that timed
            # out can complete on the server), and deleting their objects would leave photos
            # without bytes. The objects of those that never land are orphans, which the sweep
            # removes after its grace period (orphans.py).
            log.warning(
                "photo records not written; objects left to the orphan sweep",
                extra={"event_id": event.id, "photo_ids": [f.photo_id for f in files][:20]},
            )
            raise
        # Copies that lost the race to an identical file take no place.
        await self._settle(event.id, reservation, unused=len(copies))
        outcomes = [
            Committed(copies[i], duplicate=True) if i in copies else Committed(PhotoRecord.of(d))
            for i, d in enumerate(docs)
        ]
        # One line per photo stored: where a photo's trail through the logs begins (the
        # request's ids, and the message that announces it, are on the line).
        for i, (doc, file) in enumerate(zip(docs, files, strict=True)):
            if i in copies:
                continue
            log.info(
                "photo stored",
                extra={
                    "photo_id": file.photo_id,
                    "event_id": event.id,
                    "size": file.size,
                    "content_type": file.kind.content_type,
                    "message_id": next(iter(self._outbox.pending_of(doc)), None),
                },
            )
        # Confirms pipelined across the batch: one broker round trip, not one per file.
        await asyncio.gather(
            *(
                self._outbox.flush(self.photos.col, str(doc["_id"]), self._outbox.pending_of(doc))
                for i, doc in enumerate(docs)
                if i not in copies
            )
        )
        return outcomes

    async def _abandon(self, event_id: str, reservation: str) -> None:
        try:
            await self.events.abandon_reservation(
                event_id, reservation, now_ms() + self.counts.settle_ms
            )
        except Exception:  # the reservation then expires at its TTL; the insert's error counts
            log.warning("could not abandon a reservation", exc_info=True)

    async def _settle(self, event_id: str, reservation: str, *, unused: int = 0) -> None:
        """The photos are in: a failure from here on must not fail the upload. Left alone, the
        reservation expires and the recount counts the photos."""
        try:
            if await self.events.settle_reservation(event_id, reservation, now_ms(), unused):
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
        record = PhotoRecord.of(photo)
        message = Envelope.new(
            records.PHOTO_DELETED,
            {
                "photo": PhotoView.of(record, self._base_url).model_dump(mode="json"),
            },
        )
        marked = await self.photos.mark_deleting(
            record.id, message, self._outbox.push, self._topology.events, self._grace_ms
        )
        if marked is None:
            return False
        # Before the flush: a photo.deleted still pending means the place may not be given back
        # yet, and the relay that publishes it finishes the deletion (finish_deletion).
        await self._release(PhotoRecord.of(marked))
        await self._outbox.flush(self.photos.col, record.id, self._outbox.pending_of(marked))
        await self._finish_deletion(marked, released=True)
        return True

    async def _release(self, photo: PhotoRecord) -> None:
        await self.events.release_photo(
            photo.event_id,
            photo.id,
            photo.reservation_id,
            now_ms() + self.counts.reservation_ttl_ms,
        )

    async def finish_deletion(self, doc: Document) -> None:
        """Remove a tombstoned photo's objects and record (the relay calls it for leftovers)."""
        await self._finish_deletion(doc, released=False)

    async def _finish_deletion(self, doc: Document, *, released: bool) -> None:
        photo = PhotoRecord.of(doc)
        if photo.status is not PhotoStatus.DELETING:
            return
        # Re-read: a thumbnail may have been stored after the tombstone was read.
        fresh_doc = await self.photos.col.find_one({"_id": photo.id})
        if fresh_doc is None:
            return  # removed already (its place given back before that)
        fresh = PhotoRecord.of(fresh_doc)
        if not released:
            # A deleter killed after the tombstone: give the place back (once) before the
            # record goes, since after that nothing tells that it was held.
            await self._release(fresh)
        if self._outbox.pending_of(fresh_doc):
            return  # its photo.deleted is not out yet; the relay comes back
        if _others_pending(fresh_doc):
            # Another service's messages about it (a photo.processed) are not out yet: removing
            # the record would lose them. This relay comes back once they had time to go.
            await self._come_back(photo.id)
            return
        try:
            await self._store.delete_many(fresh.object_keys())
        except StorageError:
            # The record stays as a tombstone (invisible to the API) and the relay comes back
            # for it: deletion is accepted now and completed once the store answers.
            log.warning("object deletion failed; will retry", extra={"photo_id": photo.id})
            await self._come_back(photo.id)
            return
        await self.photos.remove(photo.id)

    async def _come_back(self, photo_id: str) -> None:
        """Have this service's relay look at the photo again after the grace period."""
        await self.photos.col.update_one(
            {"_id": photo_id}, {"$set": {self._outbox.lane.due: now_ms() + self._grace_ms}}
        )


def _others_pending(doc: Document) -> bool:
    """Whether any writer's messages still wait in ``doc`` (older unowned entries too)."""
    boxes = doc.get(outbox.OUTBOXES)
    owned = isinstance(boxes, dict) and any(isinstance(box, dict) and box for box in boxes.values())
    return owned or bool(outbox.pending_of(doc))


def _first_document(
    event: EventRecord,
    file: StoredFile,
    category_id: str | None,
    reservation: str,
    request_key: str | None,
    now: int,
    refuse_copies: bool,
) -> Document:
    """A new photo's record as first stored. Only the fields named here are written (those the
    later writers own, such as a title or the download count, stay out until they are set);
    ``request_key``, ``content_key`` and ``import_ref`` only where they apply, so the stored
    record is as it always was."""
    photo = PhotoRecord(
        id=file.photo_id,
        event_id=event.id,
        event_slug=event.slug,
        filename=file.filename,
        original_filename=file.original_filename,
        content_type=file.kind.content_type,
        kind=PhotoKind.VIDEO if file.kind.content_type.startswith("video/") else PhotoKind.IMAGE,
        size=file.size,
        sha256=file.sha256,
        original_key=file.key,
        category_id=category_id,
        status=PhotoStatus.UPLOADED,
        status_reason=None,
        width=None,
        height=None,
        captured_at_ms=None,
        variants={},
        created_ms=now,
        reservation_id=reservation,
    )
    if request_key is not None:
        photo.request_key = request_key
    if refuse_copies and file.sha256 is not None:
        photo.content_key = content_key(event.id, file.sha256)
    if file.import_ref is not None:
        photo.import_ref = file.import_ref
    if file.hidden:
        photo.is_hidden = True
    return photo.model_dump(by_alias=True, exclude_unset=True)

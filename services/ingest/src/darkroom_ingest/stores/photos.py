"""Photos (collection ``photos``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from darkroom_kit import outbox, records
from darkroom_kit.messaging import Envelope
from darkroom_kit.mongo import Database, Document, insert_new
from darkroom_kit.statuses import PhotoStatus
from darkroom_kit.stored.photos import PhotoRecord
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from darkroom_ingest.filenames import numbered
from darkroom_ingest.stores.common import Conflict, Push, page_of

# The sort keys of GET /v1/events/{id}/photos and the fields they order by.
PHOTO_SORT_FIELDS = {
    "upload_date": "created_ms",
    "capture_date": "captured_at_ms",
    "filename": "filename",
    "size": "size",
    "rating": "rating",
}


class PhotoStore:
    def __init__(self, db: Database) -> None:
        self.col = db[records.PHOTOS]

    async def insert_unique(
        self,
        docs: list[Document],
        prepare: Callable[[Document], None],
        holder: Callable[[str], Awaitable[PhotoRecord | None]] | None = None,
    ) -> dict[int, PhotoRecord]:
        """Insert photos; a name taken in the event gets the next free number (``a-2.jpg``).

        ``prepare`` completes a document from its final name (its outbox message names the file)
        before each insert attempt, so record and message always land in one write.

        A document whose ``content_key`` another photo holds (an identical file committed at
        the same time) is not inserted: answered by position with that photo (``holder``
        finds it)."""
        copies: dict[int, PhotoRecord] = {}
        if not docs:
            return copies
        for doc in docs:
            prepare(doc)
        for index in sorted(await insert_new(self.col, docs)):
            doc = docs[index]
            # Renumbering helps only a name clash; a photo whose id exists is a Conflict.
            if await self.col.find_one({"_id": doc["_id"]}, {"_id": 1}) is not None:
                raise Conflict(f"photo {doc['_id']} exists")
            copy_of = await _copy_of(doc, holder)
            if copy_of is not None:
                copies[index] = copy_of
                continue
            base = doc["filename"]
            for n in range(2, 10_000):
                doc["filename"] = numbered(base, n)
                prepare(doc)
                try:
                    await self.col.insert_one(doc)
                    break
                except DuplicateKeyError:
                    copy_of = await _copy_of(doc, holder)
                    if copy_of is not None:
                        copies[index] = copy_of
                        break
                    continue
            else:
                raise Conflict(f"no free name for {base!r}")
        return copies

    async def get(self, photo_id: str) -> Document | None:
        return await self.col.find_one(
            {"_id": photo_id, "status": {"$ne": PhotoStatus.DELETING}}, outbox.WITHOUT_OUTBOXES
        )

    async def by_name(self, event_id: str, filename: str) -> Document | None:
        return await self.col.find_one(
            {"event_id": event_id, "filename": filename, "status": {"$ne": PhotoStatus.DELETING}},
            outbox.WITHOUT_OUTBOXES,
        )

    async def page(
        self,
        event_id: str,
        limit: int,
        offset: int,
        *,
        category_id: str | None = None,
        is_hidden: bool | None = None,
        sort: str = "upload_date_desc",
    ) -> tuple[list[Document], int]:
        query: Document = {"event_id": event_id, "status": {"$ne": PhotoStatus.DELETING}}
        if category_id is not None:
            query["category_id"] = category_id
        if is_hidden is True:
            query["is_hidden"] = True
        elif is_hidden is False:
            query["is_hidden"] = {"$ne": True}
        key, _, direction = sort.rpartition("_")
        order = ASCENDING if direction == "asc" else DESCENDING
        return await page_of(
            self.col,
            query,
            outbox.WITHOUT_OUTBOXES,
            [(PHOTO_SORT_FIELDS[key], order), ("_id", order)],
            limit,
            offset,
        )

    async def patch(self, photo_id: str, fields: Document) -> Document | None:
        return await self.col.find_one_and_update(
            {"_id": photo_id, "status": {"$ne": PhotoStatus.DELETING}},
            {"$set": fields},
            outbox.WITHOUT_OUTBOXES,
            return_document=ReturnDocument.AFTER,
        )

    async def count_shown(self, event_id: str) -> int:
        """The event's photos that are not hidden."""
        return await self.col.count_documents(
            {
                "event_id": event_id,
                "status": {"$ne": PhotoStatus.DELETING},
                "is_hidden": {"$ne": True},
            }
        )

    async def count_download(self, photo_id: str) -> None:
        await self.col.update_one({"_id": photo_id}, {"$inc": {"download_count": 1}})

    async def mark_deleting(
        self, photo_id: str, message: Envelope, push: Push, exchange: str, grace_ms: int
    ) -> Document | None:
        """Tombstone a photo and queue its ``photo.deleted`` in the same write (``push``: the
        writer's outbox). Returns the photo as it was, or None when it is unknown or already
        being deleted."""
        ops = push(exchange, [message], grace_ms)
        ops["$set"]["status"] = PhotoStatus.DELETING
        # A file equal to it may be uploaded again once it is gone.
        ops.setdefault("$unset", {})["content_key"] = ""
        return await self.col.find_one_and_update(
            {"_id": photo_id, "status": {"$ne": PhotoStatus.DELETING}},
            ops,
            return_document=ReturnDocument.AFTER,
        )

    async def remove(self, photo_id: str) -> None:
        await self.col.delete_one({"_id": photo_id, "status": PhotoStatus.DELETING})


async def _copy_of(
    doc: Document, holder: Callable[[str], Awaitable[PhotoRecord | None]] | None
) -> PhotoRecord | None:
    key = doc.get("content_key")
    if holder is None or not isinstance(key, str):
        return None
    found = await holder(key)
    return found if found is not None and found.id != doc["_id"] else None

"""The writes a tus upload adds to the upload records (chunked/store.py holds the rest).

A PATCH writes under a lease on the record, taken only at the offset the client names, so of two
PATCHes racing for one upload (on one replica or two) one writes and the other is refused; never
are their bytes interleaved. The holder records its progress with writes that match only while it
holds the lease, and its last write releases it.
"""

from __future__ import annotations

from darkroom_kit.lease import RELEASED, Lease
from darkroom_kit.mongo import Document
from darkroom_kit.statuses import UploadState
from darkroom_kit.stored.uploads import UploadRecord
from pymongo import ReturnDocument

from darkroom_ingest.chunked.store import UploadRecords


class TusRecords:
    def __init__(self, uploads: UploadRecords) -> None:
        self.col = uploads.col

    async def take(
        self, upload_id: str, offset: int, lease: Lease, now: int
    ) -> UploadRecord | None:
        """The tus upload, held by ``lease``, if it is open at ``offset`` and nobody writes to
        it: all a PATCH reads of it (but its parts), in the write that takes it."""
        taken = await self.col.find_one_and_update(
            {
                "$and": [
                    {
                        "_id": upload_id,
                        "protocol": "tus",
                        "state": UploadState.OPEN.value,
                        "offset": offset,
                    },
                    {"$or": [{"lease_until_ms": {"$exists": False}}, Lease.free(now)]},
                ]
            },
            {"$set": lease.fields(now)},
            {"parts": 0},
            return_document=ReturnDocument.AFTER,
        )
        return UploadRecord.maybe(taken)

    async def progress(self, lease: Lease, fields: Document, *, release: bool = False) -> bool:
        """Record what the holder kept; False when it no longer holds the upload."""
        update: Document = {"$set": fields}
        if release:
            update["$unset"] = RELEASED
        result = await self.col.update_one(
            {**lease.mine(), "state": UploadState.OPEN.value}, update
        )
        return result.matched_count == 1

    async def release(self, lease: Lease) -> None:
        await self.col.update_one(lease.mine(), {"$unset": RELEASED})

    async def mark_consumed(self, upload_ids: list[str], now: int) -> None:
        """Partial uploads a final one was made of: over, their objects no longer needed."""
        await self.col.update_many(
            {"_id": {"$in": upload_ids}, "state": UploadState.OPEN.value},
            {"$set": {"state": UploadState.COMPLETED.value, "completed_ms": now}},
        )

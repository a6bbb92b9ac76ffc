"""The upload records in MongoDB. Every move of the machine is one write conditional on the state
it starts from (machine.sources), so that racing requests and processes make it once."""

from __future__ import annotations

from collections.abc import AsyncIterator

from darkroom_kit.errors import not_found
from darkroom_kit.lease import RELEASED, Lease
from darkroom_kit.mongo import Database, Document
from darkroom_kit.statuses import UploadState
from darkroom_kit.stored.uploads import StoredChunk, UploadFailure, UploadRecord
from pymongo import ASCENDING, ReturnDocument

from darkroom_ingest.chunked import machine

UPLOADS = "uploads"
S = UploadState


def _from(target: UploadState) -> Document:
    """The condition of a move to ``target``."""
    return {"state": {"$in": [s.value for s in machine.sources(target)]}}


class UploadRecords:
    def __init__(self, db: Database) -> None:
        self.col = db[UPLOADS]

    async def ensure_indexes(self) -> None:
        await self.col.create_index([("state", ASCENDING), ("expires_ms", ASCENDING)])
        # Same-size uploads in flight: an identical file may be among them (duplicates.py).
        await self.col.create_index([("event_id", ASCENDING), ("size", ASCENDING)])

    def lease(self, upload_id: str, lease_ms: int) -> Lease:
        return Lease(self.col, upload_id, lease_ms)

    async def insert(self, upload: UploadRecord) -> None:
        await self.col.insert_one(upload.document())

    async def get(self, upload_id: str, *, with_parts: bool = True) -> UploadRecord:
        # The parts map grows with every chunk: a chunk PUT leaves it out, or each PUT would
        # decode all earlier chunks' records (quadratic over a 10 GB upload).
        projection = None if with_parts else {"parts": 0, "head": 0}
        doc = await self.col.find_one({"_id": upload_id}, projection)
        if doc is None:
            raise not_found("upload", upload_id)
        return UploadRecord.of(doc)

    async def record_chunk(
        self, upload_id: str, index: int, chunk: StoredChunk, head: bytes | None
    ) -> bool:
        """Keep the chunk's part, if the upload is still open."""
        update: Document = {f"parts.{index}": chunk.model_dump()}
        if head is not None:
            update["head"] = head
        result = await self.col.update_one(
            {"_id": upload_id, "state": S.OPEN.value}, {"$set": update}
        )
        return result.matched_count == 1

    # ---- completion ------------------------------------------------------------------------

    async def claim(self, upload_id: str, lease: Lease, now: int) -> UploadRecord | None:
        """Move to completing under ``lease``: from open, or from completing when its holder's
        lease ran out (it died)."""
        # Under $and: nx-27017 matches other documents when a single-document update's
        # filter has fields beside a top-level $or.
        claimed = await self.col.find_one_and_update(
            {
                "$and": [
                    {"_id": upload_id},
                    {
                        "$or": [
                            {"state": S.OPEN.value},
                            {
                                "$and": [
                                    {"state": S.COMPLETING.value},
                                    Lease.free(now, "completing_ms", machine.STALE_COMPLETING_MS),
                                ]
                            },
                        ]
                    },
                ]
            },
            {"$set": {"state": S.COMPLETING.value, "completing_ms": now, **lease.fields(now)}},
            return_document=ReturnDocument.AFTER,
        )
        return UploadRecord.maybe(claimed)

    async def reopen(self, lease: Lease) -> None:
        """Back to open (the object store failed), so that the client may complete again."""
        await self.col.update_one(
            {**lease.mine(), "state": S.COMPLETING.value},
            {"$set": {"state": S.OPEN.value}, "$unset": RELEASED},
        )

    async def fail(self, lease: Lease, failure: UploadFailure) -> bool:
        """Whether this holder failed it: one that lost its lease leaves the upload to the one
        that took it over."""
        failed = await self.col.update_one(
            {**lease.mine(), "state": S.COMPLETING.value},
            {"$set": {"state": S.FAILED.value, "error": failure.model_dump()}, "$unset": RELEASED},
        )
        return failed.matched_count == 1

    async def mark_completed(
        self, upload_id: str, now: int, *, duplicate_of: str | None = None
    ) -> bool:
        """Whether this call completed it (False: another completer had, or it is gone)."""
        # Unconditional: the photo exists, whichever completer made it.
        done: Document = {"state": S.COMPLETED.value, "completed_ms": now}
        if duplicate_of is not None:
            done["duplicate_of"] = duplicate_of
        before = await self.col.find_one_and_update(
            {"_id": upload_id}, {"$set": done, "$unset": {"head": "", **RELEASED}}, {"state": 1}
        )
        return before is not None and before.get("state") != S.COMPLETED.value

    async def abandoned(self, now: int, limit: int) -> AsyncIterator[str]:
        """Uploads left completing whose lease ran out long ago: their completer died and their
        client did not ask again."""
        stale = self.col.find(
            {
                "$and": [
                    {"state": S.COMPLETING.value},
                    Lease.free(
                        now - machine.ABANDONED_COMPLETE_MS,
                        "completing_ms",
                        machine.STALE_COMPLETING_MS,
                    ),
                ]
            },
            {"_id": 1},
        ).limit(limit)
        async for doc in stale:
            yield str(doc["_id"])

    # ---- cancel and expiry -----------------------------------------------------------------

    async def abort(self, upload_id: str) -> UploadRecord | None:
        """The upload as it was when aborted (what it holds then is what to drop), or None
        when it could not be."""
        aborted = await self.col.find_one_and_update(
            {"_id": upload_id, **_from(S.ABORTED)},
            {"$set": {"state": S.ABORTED.value}},
            {"parts": 0, "head": 0},
        )
        return UploadRecord.maybe(aborted)

    async def expire_next(self, now: int) -> UploadRecord | None:
        """One upload past its expiry, moved to expired."""
        expired = await self.col.find_one_and_update(
            {**_from(S.EXPIRED), "expires_ms": {"$lt": now}},
            {"$set": {"state": S.EXPIRED.value}},
            {"parts": 0, "head": 0},
        )
        return UploadRecord.maybe(expired)

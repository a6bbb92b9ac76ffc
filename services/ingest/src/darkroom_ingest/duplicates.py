"""Duplicates within an event: a file whose SHA-256 equals a photo's already there is that photo.

A batch hashes its files on the way in, and a client may declare a chunked upload's hash; the
other uploads (chunked without a hash, tus, direct, imports) arrive in pieces or never pass
through here, and reading a whole file back from S3 to hash it costs as much as receiving it.
So their hash is computed only where a copy is possible at all: when a photo of the same size is
in the event, an upload of the same size is open or completing in it (two identical files in
flight at once), or another file of the commit has its size. A same-size photo stored without a
hash gets one when any file of its size arrives (hashed or not), so the comparison has both
sides. Sizes differ for nearly all distinct photos, so nearly no upload pays for
the read.

A photo that refuses copies carries ``content_key`` ("<event id>/<sha256>") under a unique
index: of two identical files committed at once, the second insert is refused and answered with
the first photo (stores.photos.PhotoStore.insert_unique).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter as Tally
from collections.abc import Mapping
from typing import TYPE_CHECKING

from darkroom_kit import outbox, records
from darkroom_kit.mongo import Collection, Database, Document
from darkroom_kit.statuses import PhotoStatus, UploadState
from darkroom_kit.storage import ObjectNotFound, S3ObjectStore, StorageError
from darkroom_kit.stored.photos import PhotoRecord
from pymongo.errors import DuplicateKeyError

from darkroom_ingest.chunked.store import UPLOADS
from darkroom_ingest.uploads import StoredFile, object_sha256

if TYPE_CHECKING:
    from darkroom_ingest.photos import Committed

log = logging.getLogger(__name__)

IN_FLIGHT = [UploadState.OPEN.value, UploadState.COMPLETING.value]
# Photos without a hash read back in one upload's completion at most (each a whole read).
HASH_AT_ONCE = 20


def content_key(event_id: str, sha256: str) -> str:
    return f"{event_id}/{sha256}"


class Duplicates:
    def __init__(self, db: Database, store: S3ObjectStore) -> None:
        self._photos = db[records.PHOTOS]
        self._uploads = db[UPLOADS]
        self._store = store

    async def with_digests(self, event_id: str, files: list[StoredFile]) -> list[StoredFile]:
        """``files`` with a SHA-256 wherever another file of the same size could be a copy (in the
        event, in flight, or among ``files``), after hashing the event's photos of those sizes
        that have none yet (so a file hashed on the way compares with them too)."""
        sizes = {f.size for f in files}
        unhashed = await self._sizes(self._photos, event_id, sizes, {"sha256": None})
        for size in sorted(unhashed):
            await self._hash_same_size_photos(event_id, size)
        pending = [f for f in files if f.sha256 is None]
        if not pending:
            return files
        pending_sizes = {f.size for f in pending}
        possible = await self._sizes(self._photos, event_id, pending_sizes, {})
        in_flight = self._uploads.find(
            {
                "event_id": event_id,
                "size": {"$in": sorted(pending_sizes)},
                "state": {"$in": IN_FLIGHT},
            },
            {"size": 1, "photo_id": 1},
        )
        async for upload in in_flight:
            if any(f.photo_id != upload["photo_id"] for f in pending if f.size == upload["size"]):
                possible.add(int(upload["size"]))
        seen = Tally(f.size for f in files)
        out = []
        for file in files:
            if file.sha256 is None and (file.size in possible or seen[file.size] > 1):
                digest = await object_sha256(self._store, file.key)
                out.append(dataclasses.replace(file, sha256=digest))
            else:
                out.append(file)
        return out

    async def _sizes(
        self, col: Collection, event_id: str, sizes: set[int], where: Document
    ) -> set[int]:
        """Which of ``sizes`` a live photo of the event has (matching ``where``)."""
        if not sizes:
            return set()
        query: Document = {
            "event_id": event_id,
            "size": {"$in": sorted(sizes)},
            "status": {"$ne": PhotoStatus.DELETING},
            **where,
        }
        # $group, not distinct(): the nx-27017 stand-in's distinct() ignores $in and $ne.
        groups = await col.aggregate([{"$match": query}, {"$group": {"_id": "$size"}}])
        return {int(group["_id"]) async for group in groups}

    async def earlier(self, event_id: str, digests: list[str]) -> dict[str, PhotoRecord]:
        """The oldest photo in the event with each of ``digests``."""
        if not digests:
            return {}
        found: dict[str, PhotoRecord] = {}
        cursor = self._photos.find(
            {
                "event_id": event_id,
                "sha256": {"$in": sorted(set(digests))},
                "status": {"$ne": PhotoStatus.DELETING},
            },
            outbox.WITHOUT_OUTBOXES,
        ).sort("_id", 1)
        async for doc in cursor:
            photo = PhotoRecord.of(doc)
            if photo.sha256 is not None:
                found.setdefault(photo.sha256, photo)
        return found

    async def gone(self, outcomes: Mapping[int, Committed]) -> set[str]:
        """The photos that copies were answered with and that are being deleted (or gone)."""
        named = {c.photo.id for c in outcomes.values() if c.duplicate}
        if not named:
            return set()
        alive = self._photos.find(
            {"_id": {"$in": sorted(named)}, "status": {"$ne": PhotoStatus.DELETING}}, {"_id": 1}
        )
        return named - {str(doc["_id"]) async for doc in alive}

    async def holder(self, key: str) -> PhotoRecord | None:
        """The photo holding ``content_key`` ``key`` (the one an insert clashed with)."""
        return PhotoRecord.maybe(
            await self._photos.find_one({"content_key": key}, outbox.WITHOUT_OUTBOXES)
        )

    async def _hash_same_size_photos(self, event_id: str, size: int) -> None:
        """Photos stored before anything needed their hash (at most HASH_AT_ONCE in one call:
        a later upload of the size hashes the rest; until then a copy of one may be kept)."""
        unhashed = self._photos.find(
            {
                "event_id": event_id,
                "size": size,
                "sha256": None,
                "status": {"$ne": PhotoStatus.DELETING},
            },
            {"_id": 1, "original_key": 1},
            limit=HASH_AT_ONCE,
        )
        async for doc in unhashed:
            try:
                digest = await object_sha256(self._store, str(doc["original_key"]))
            except (ObjectNotFound, StorageError):
                log.warning("could not hash a photo to compare", extra={"photo_id": doc["_id"]})
                continue
            fields: Document = {"sha256": digest, "content_key": content_key(event_id, digest)}
            try:
                await self._photos.update_one({"_id": doc["_id"], "sha256": None}, {"$set": fields})
            except DuplicateKeyError:
                # Already a copy of another photo (both stored before either had a hash): it
                # stays, and the oldest holds the key.
                await self._photos.update_one(
                    {"_id": doc["_id"], "sha256": None}, {"$set": {"sha256": digest}}
                )

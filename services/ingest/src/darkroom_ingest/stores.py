"""MongoDB adapters of upload-ingest's records. Vendor errors become domain errors here."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from darkroom_kit import outbox, records
from darkroom_kit.clock import now_ms
from darkroom_kit.ids import new_id
from darkroom_kit.lease import RELEASED, Lease
from darkroom_kit.messaging import Envelope
from darkroom_kit.mongo import Collection, Database, Document, insert_new
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from darkroom_ingest.filenames import numbered

# The sort keys of GET /v1/events/{id}/photos and the fields they order by.
PHOTO_SORT_FIELDS = {
    "upload_date": "created_ms",
    "capture_date": "captured_at_ms",
    "filename": "filename",
    "size": "size",
    "rating": "rating",
}


NEWEST_FIRST = [("created_ms", DESCENDING), ("_id", DESCENDING)]


async def _page(
    col: Collection,
    query: Document,
    projection: Document | None,
    sort: list[tuple[str, int]],
    limit: int,
    offset: int,
) -> tuple[list[Document], int]:
    """One page of a list and the total it is a page of (the _id in ``sort`` keeps equal keys
    in a stable order across pages)."""
    total = await col.count_documents(query)
    cursor = col.find(query, projection).sort(sort).skip(offset).limit(limit)
    return [d async for d in cursor], total


class Conflict(Exception):
    """A unique value is taken."""


class CapExceeded(Exception):
    def __init__(self, cap: int, count: int) -> None:
        super().__init__(f"cap {cap}, already {count}")
        self.cap = cap
        self.count = count


async def ensure_indexes(db: Database) -> None:
    await db[records.TOKENS].create_index([("hash", ASCENDING)], unique=True)
    await db[records.EVENTS].create_index([("slug", ASCENDING)], unique=True)
    await db[records.EVENTS].create_index([(outbox.OUTBOX_DUE, ASCENDING)], sparse=True)
    # The photo-count reconciliation's periodic pass (darkroom_ingest.counting).
    await db[records.EVENTS].create_index([("reconcile_due_ms", ASCENDING)], sparse=True)
    photos = db[records.PHOTOS]
    await photos.create_index([("event_id", ASCENDING), ("filename", ASCENDING)], unique=True)
    await photos.create_index([("event_id", ASCENDING), ("created_ms", DESCENDING)])
    # A repeated request (same Idempotency-Key) finds the photos its first run stored.
    await photos.create_index([("event_id", ASCENDING), ("request_key", ASCENDING)], sparse=True)
    await photos.create_index([(outbox.OUTBOX_DUE, ASCENDING)], sparse=True)
    # metadata-repair counts what one repair did (after a restart) by the photos it marked.
    await photos.create_index([("repaired_by", ASCENDING)], sparse=True)
    await db[records.WEBHOOK_ENDPOINTS].create_index([("enabled", ASCENDING)])
    await db[records.WEBHOOK_DELIVERIES].create_index(
        [("endpoint_id", ASCENDING), ("created_ms", DESCENDING)]
    )
    await db[records.WEBHOOK_ATTEMPTS].create_index([("delivery_id", ASCENDING)])
    await db[records.IDEMPOTENCY].create_index([("expires_at", ASCENDING)], expireAfterSeconds=0)


class TokenStore:
    def __init__(self, db: Database) -> None:
        self._col = db[records.TOKENS]

    async def create(
        self, name: str, token_hash: str, scopes: list[str], event_id: str | None = None
    ) -> Document:
        doc = {
            "_id": new_id("tok"),
            "name": name,
            "hash": token_hash,
            "scopes": scopes,
            "event_id": event_id,
            "created_ms": now_ms(),
            "revoked": False,
        }
        await self._col.insert_one(doc)
        return doc

    async def by_hash(self, token_hash: str) -> Document | None:
        return await self._col.find_one({"hash": token_hash, "revoked": False})

    async def list(self) -> list[Document]:
        return [d async for d in self._col.find({}, {"hash": 0}).sort("created_ms", ASCENDING)]

    async def revoke(self, token_id: str) -> bool:
        res = await self._col.update_one({"_id": token_id}, {"$set": {"revoked": True}})
        return res.matched_count == 1


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
        return await self.col.find_one({"_id": event_id}, {outbox.OUTBOX: 0})

    async def page(
        self, limit: int, offset: int, slug: str | None = None, event_id: str | None = None
    ) -> tuple[list[Document], int]:
        query: Document = {}
        if slug is not None:
            query["slug"] = slug
        if event_id is not None:
            query["_id"] = event_id
        return await _page(self.col, query, {outbox.OUTBOX: 0}, NEWEST_FIRST, limit, offset)

    async def by_slug(self, slug: str) -> Document | None:
        return await self.col.find_one({"slug": slug}, {outbox.OUTBOX: 0})

    async def reserve_photos(
        self, event: Document, n: int, reservation_id: str, until_ms: int
    ) -> None:
        """Count ``n`` more photos against the event's cap, atomically: a conditional update, never
        count-then-insert. The places are a reservation, in the same write, that a reconciliation
        gives back once it expires (darkroom_ingest.counting). Raises :class:`CapExceeded`."""
        ops: Document = {
            "$inc": {"photo_count": n, "count_version": 1},
            "$set": {f"reservations.{reservation_id}": {"n": n, "until_ms": until_ms}},
            "$min": {"reconcile_due_ms": until_ms},
        }
        for _ in range(5):
            cap = event.get("photo_cap")
            query: Document = {"_id": event["_id"]}
            if cap is None:
                query["photo_cap"] = None
            else:
                query.update({"photo_cap": cap, "photo_count": {"$lte": cap - n}})
            updated = await self.col.find_one_and_update(
                query, ops, {"_id": 1}, return_document=ReturnDocument.AFTER
            )
            if updated is not None:
                return
            fresh = await self.get(event["_id"])
            if fresh is None:
                raise LookupError(event["_id"])
            if cap is not None and fresh.get("photo_cap") == cap:
                raise CapExceeded(cap, fresh.get("photo_count", 0))
            event = fresh  # the cap changed under us: decide again with the new one
        raise CapExceeded(event.get("photo_cap") or 0, event.get("photo_count", 0))

    async def patch(self, event_id: str, fields: Document) -> Document | None:
        query: Document = {"_id": event_id}
        cap = fields.get("photo_cap")
        if cap is not None:
            # Never below what the event already holds (checked in the same write).
            query["photo_count"] = {"$lte": cap}
        return await self.col.find_one_and_update(
            query, {"$set": fields}, {outbox.OUTBOX: 0}, return_document=ReturnDocument.AFTER
        )

    async def archive(
        self,
        event_id: str,
        message_for: Callable[[Document], Envelope],
        exchange: str,
        grace_ms: int,
    ) -> Document | None:
        """Archive once, with its event.archived in the same write. None if already archived."""
        current = await self.get(event_id)
        if current is None or current.get("status") == "archived":
            return None
        ops = outbox.push(exchange, [message_for({**current, "status": "archived"})], grace_ms)
        ops["$set"].update({"status": "archived", "archived_ms": now_ms()})
        return await self.col.find_one_and_update(
            {"_id": event_id, "status": {"$ne": "archived"}},
            ops,
            return_document=ReturnDocument.AFTER,
        )

    async def settle_reservation(self, event_id: str, reservation_id: str, now: int) -> bool:
        """A commit's photos are all in: its reservation becomes their count (the count itself
        does not move). False if the reservation had already expired: a recount may have missed
        photos that landed after it, so the caller recounts."""
        result = await self.col.update_one(
            {"_id": event_id, f"reservations.{reservation_id}.until_ms": {"$gt": now}},
            {"$unset": {f"reservations.{reservation_id}": ""}},
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
        await self.col.update_one(
            {"_id": event_id, f"count_released.{photo_id}": {"$exists": False}},
            {
                "$inc": {"photo_count": -1, "count_version": 1},
                "$set": {f"count_released.{photo_id}": {"at_ms": now_ms(), "rid": reservation_id}},
                "$min": {"reconcile_due_ms": due_ms},
            },
        )


class PhotoStore:
    def __init__(self, db: Database) -> None:
        self.col = db[records.PHOTOS]

    async def insert_unique(
        self, docs: list[Document], prepare: Callable[[Document], None]
    ) -> list[Document]:
        """Insert photos; a name taken in the event gets the next free number (``a-2.jpg``).

        ``prepare`` completes a document from its final name (its outbox message names the file)
        before each insert attempt, so record and message always land in one write."""
        if not docs:
            return []
        for doc in docs:
            prepare(doc)
        for index in sorted(await insert_new(self.col, docs)):
            doc = docs[index]
            # Renumbering helps only a name clash; a photo whose id exists is a Conflict.
            if await self.col.find_one({"_id": doc["_id"]}, {"_id": 1}) is not None:
                raise Conflict(f"photo {doc['_id']} exists")
            base = doc["filename"]
            for n in range(2, 10_000):
                doc["filename"] = numbered(base, n)
                prepare(doc)
                try:
                    await self.col.insert_one(doc)
                    break
                except DuplicateKeyError:
                    continue
            else:
                raise Conflict(f"no free name for {base!r}")
        return docs

    async def get(self, photo_id: str) -> Document | None:
        return await self.col.find_one(
            {"_id": photo_id, "status": {"$ne": "deleting"}}, {outbox.OUTBOX: 0}
        )

    async def by_name(self, event_id: str, filename: str) -> Document | None:
        return await self.col.find_one(
            {"event_id": event_id, "filename": filename, "status": {"$ne": "deleting"}},
            {outbox.OUTBOX: 0},
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
        query: Document = {"event_id": event_id, "status": {"$ne": "deleting"}}
        if category_id is not None:
            query["category_id"] = category_id
        if is_hidden is True:
            query["is_hidden"] = True
        elif is_hidden is False:
            query["is_hidden"] = {"$ne": True}
        key, _, direction = sort.rpartition("_")
        order = ASCENDING if direction == "asc" else DESCENDING
        return await _page(
            self.col,
            query,
            {outbox.OUTBOX: 0},
            [(PHOTO_SORT_FIELDS[key], order), ("_id", order)],
            limit,
            offset,
        )

    async def patch(self, photo_id: str, fields: Document) -> Document | None:
        return await self.col.find_one_and_update(
            {"_id": photo_id, "status": {"$ne": "deleting"}},
            {"$set": fields},
            {outbox.OUTBOX: 0},
            return_document=ReturnDocument.AFTER,
        )

    async def count_download(self, photo_id: str) -> None:
        await self.col.update_one({"_id": photo_id}, {"$inc": {"download_count": 1}})

    async def mark_deleting(
        self, photo_id: str, message: Envelope, exchange: str, grace_ms: int
    ) -> Document | None:
        """Tombstone a photo and queue its ``photo.deleted`` in the same write. Returns the photo
        as it was, or None when it is unknown or already being deleted."""
        ops = outbox.push(exchange, [message], grace_ms)
        ops["$set"]["status"] = "deleting"
        return await self.col.find_one_and_update(
            {"_id": photo_id, "status": {"$ne": "deleting"}},
            ops,
            return_document=ReturnDocument.AFTER,
        )

    async def remove(self, photo_id: str) -> None:
        await self.col.delete_one({"_id": photo_id, "status": "deleting"})


class WebhookStore:
    def __init__(self, db: Database) -> None:
        self._col = db[records.WEBHOOK_ENDPOINTS]
        self._deliveries = db[records.WEBHOOK_DELIVERIES]
        self._attempts = db[records.WEBHOOK_ATTEMPTS]

    async def create(self, doc: Document) -> Document:
        await self._col.insert_one(doc)
        return doc

    async def get(self, endpoint_id: str) -> Document | None:
        return await self._col.find_one({"_id": endpoint_id, "deleted": {"$ne": True}})

    async def page(self, limit: int, offset: int) -> tuple[list[Document], int]:
        query = {"deleted": {"$ne": True}}
        return await _page(self._col, query, None, NEWEST_FIRST, limit, offset)

    async def patch(
        self, endpoint_id: str, fields: Document, unset: Document | None = None
    ) -> Document | None:
        ops: Document = {"$set": fields}
        if unset:
            ops["$unset"] = unset
        return await self._col.find_one_and_update(
            {"_id": endpoint_id}, ops, return_document=ReturnDocument.AFTER
        )

    async def delete(self, endpoint_id: str) -> bool:
        res = await self._col.delete_one({"_id": endpoint_id})
        return res.deleted_count == 1

    async def deliveries(
        self, endpoint_id: str, limit: int, offset: int, filters: Document | None = None
    ) -> tuple[list[Document], int]:
        """A page of an endpoint's deliveries (newest first), each with its attempts."""
        query = {**(filters or {}), "endpoint_id": endpoint_id}
        docs, total = await _page(
            self._deliveries, query, {"payload": 0}, NEWEST_FIRST, limit, offset
        )
        await self._with_attempts(docs)
        return docs, total

    async def delivery(self, endpoint_id: str, delivery_id: str) -> Document | None:
        doc = await self._deliveries.find_one({"_id": delivery_id, "endpoint_id": endpoint_id})
        if doc is not None:
            await self._with_attempts([doc])
        return doc

    async def _with_attempts(self, docs: list[Document]) -> None:
        """Each delivery's attempts as a list by number: webhook-dispatch keeps them in the
        delivery (a map by number); deliveries logged before that have them as documents of
        their own, which are read too."""
        by_delivery: dict[str, dict[int, Document]] = {}
        for doc in docs:
            held = doc.get("attempts")
            by_delivery[doc["_id"]] = {
                int(a["attempt"]): a for a in (held.values() if isinstance(held, dict) else [])
            }
        if docs:
            attempts = self._attempts.find({"delivery_id": {"$in": list(by_delivery)}})
            async for attempt in attempts:
                by_delivery[attempt["delivery_id"]].setdefault(int(attempt["attempt"]), attempt)
        for doc in docs:
            doc["attempts"] = [a for _, a in sorted(by_delivery[doc["_id"]].items())]

    async def reopen(self, endpoint_id: str, delivery_id: str) -> Document | None:
        """Make a final delivery pending again (for a resend); None if it is not final."""
        return await self._deliveries.find_one_and_update(
            {
                "_id": delivery_id,
                "endpoint_id": endpoint_id,
                "status": {"$in": ["succeeded", "failed", "cancelled"]},
            },
            {"$set": {"status": "pending", "lease_until_ms": 0}},
            return_document=ReturnDocument.AFTER,
        )

    async def set_status(self, delivery_id: str, status: str) -> None:
        await self._deliveries.update_one({"_id": delivery_id}, {"$set": {"status": status}})

    async def create_delivery(self, doc: Document) -> None:
        await self._deliveries.insert_one(doc)


class IdempotencyStore:
    """Remembers the first answer to each (token, Idempotency-Key)."""

    def __init__(self, db: Database) -> None:
        self._col = db[records.IDEMPOTENCY]

    def lease(self, key: str, lease_ms: int) -> Lease:
        return Lease(self._col, key, lease_ms)

    async def begin(
        self, key: str, fingerprint: str, ttl_ms: int, lease: Lease, legacy_stale_ms: int
    ) -> Document | None:
        """Claim the key under ``lease``. None when claimed; otherwise the record that holds it."""
        now = now_ms()
        doc = {
            "_id": key,
            "fingerprint": fingerprint,
            "state": "running",
            "started_ms": now,
            "expires_at": datetime.now(UTC) + timedelta(milliseconds=ttl_ms),
            **lease.fields(now),
        }
        with contextlib.suppress(DuplicateKeyError):
            await self._col.insert_one(doc)
            return None
        # A claim whose holder died (it stopped renewing its lease) may be taken over. The
        # conditions are under $and: nx-27017 matches other documents when a single-document
        # update's filter has fields beside a top-level $or.
        taken = await self._col.find_one_and_update(
            {
                "$and": [
                    {"_id": key, "state": "running", "fingerprint": fingerprint},
                    Lease.free(now, "started_ms", legacy_stale_ms),
                ]
            },
            {"$set": {"started_ms": now, **lease.fields(now)}},
        )
        if taken is not None:
            return None
        existing = await self._col.find_one({"_id": key})
        if existing is None:  # expired between the two calls: claim again
            return await self.begin(key, fingerprint, ttl_ms, lease, legacy_stale_ms)
        return existing

    async def finish(self, lease: Lease, status: int, body: bytes, content_type: str) -> None:
        # Only while this request still holds the key: one that lost it leaves the answer to the
        # request that took over.
        await self._col.update_one(
            lease.mine(),
            {
                "$set": {
                    "state": "done",
                    "status": status,
                    "body": body,
                    "content_type": content_type,
                },
                "$unset": RELEASED,
            },
        )

    async def abandon(self, lease: Lease) -> None:
        await self._col.delete_one({**lease.mine(), "state": "running"})

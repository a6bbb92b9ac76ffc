"""Idempotency keys (collection ``idempotency_keys``)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.lease import RELEASED, Lease
from darkroom_kit.mongo import Database, Document
from darkroom_kit.statuses import IdempotencyState
from darkroom_kit.stored.idempotency import IdempotencyRecord
from pymongo.errors import DuplicateKeyError


class IdempotencyStore:
    """Remembers the first answer to each (token, Idempotency-Key)."""

    def __init__(self, db: Database) -> None:
        self._col = db[records.IDEMPOTENCY]

    def lease(self, key: str, lease_ms: int) -> Lease:
        return Lease(self._col, key, lease_ms)

    async def begin(
        self, key: str, fingerprint: str, ttl_ms: int, lease: Lease, legacy_stale_ms: int
    ) -> IdempotencyRecord | None:
        """Claim the key under ``lease``. None when claimed; otherwise the record that holds it."""
        now = now_ms()
        doc: Document = {
            "_id": key,
            "fingerprint": fingerprint,
            "state": IdempotencyState.RUNNING,
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
                    {"_id": key, "state": IdempotencyState.RUNNING, "fingerprint": fingerprint},
                    Lease.free(now, "started_ms", legacy_stale_ms),
                ]
            },
            {"$set": {"started_ms": now, **lease.fields(now)}},
        )
        if taken is not None:
            return None
        existing = IdempotencyRecord.maybe(await self._col.find_one({"_id": key}))
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
                    "state": IdempotencyState.DONE,
                    "status": status,
                    "body": body,
                    "content_type": content_type,
                },
                "$unset": RELEASED,
            },
        )

    async def abandon(self, lease: Lease) -> None:
        await self._col.delete_one({**lease.mine(), "state": IdempotencyState.RUNNING})

"""Leases on MongoDB documents: a lock that its holder keeps alive while it works.

A lock that only expires after a fixed time must outlast the slowest piece of work, so a holder
that dies keeps it for that long (minutes). A lease is short instead: the holder pushes
``lease_until_ms`` forward every third of its length while it works, so a live holder's lease
never runs out, and a dead holder's runs out within one lease length, after which the next
claimant may take it over. Each claim writes a new holder id, so a holder that lost its lease (it
stalled for longer than a lease and another process took over) finds out at its next renewal and
its conditional final writes no longer match.

Taking a lease is the caller's own conditional write (its conditions plus :meth:`Lease.free`, with
:meth:`Lease.fields` in its ``$set``); ``async with lease:`` then renews it while the work runs,
and stops on every way out of the block. Times are the writers' clocks in epoch milliseconds, so
a lease must be long against the clock skew between replicas.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

from darkroom_kit.clock import now_ms
from darkroom_kit.ids import new_id
from darkroom_kit.mongo import Collection, Document

log = logging.getLogger(__name__)

UNTIL = "lease_until_ms"
HOLDER = "lease_holder"
# ``$unset`` these with the write that ends the work: a finished record holds no lease.
RELEASED: Document = {UNTIL: "", HOLDER: ""}


class Lease:
    """One holder's lease on the document ``doc_id`` of ``col``."""

    def __init__(self, col: Collection, doc_id: Any, lease_ms: int) -> None:
        self.col = col
        self.doc_id = doc_id
        self.lease_ms = lease_ms
        self.holder = new_id("lease")
        # Set when a renewal found the document no longer held by this holder.
        self.lost = False
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def free(now: int, legacy_field: str | None = None, legacy_stale_ms: int = 0) -> Document:
        """The condition under which the lease may be taken (over): it has run out. Records
        written before leases existed have no ``lease_until_ms``; with ``legacy_field`` they are
        free once that start time is ``legacy_stale_ms`` old (the rule they were written under:
        their holder, a process of the previous version, does not renew).

        The answer is a ``$or``: put it under ``$and`` with the caller's other conditions, since
        nx-27017 matches other documents when a single-document update's filter has fields
        beside a top-level ``$or``."""
        branches: list[Document] = [{UNTIL: {"$lt": now}}]
        if legacy_field is not None:
            branches.append(
                {UNTIL: {"$exists": False}, legacy_field: {"$lt": now - legacy_stale_ms}}
            )
        return {"$or": branches}

    def fields(self, now: int | None = None) -> Document:
        """What the claiming write ``$set``s."""
        return {UNTIL: (now_ms() if now is None else now) + self.lease_ms, HOLDER: self.holder}

    def mine(self) -> Document:
        """A filter that matches the document only while this holder holds it: for the final
        writes, so a holder that lost the lease never overwrites its successor's work."""
        return {"_id": self.doc_id, HOLDER: self.holder}

    async def confirm(self) -> bool:
        """Renew now and say whether this holder still holds the lease: for the moment just
        before a write that must happen once, since a holder can lose its lease while it works
        (its renewals failed for longer than the lease, during a database outage, and another
        process took over)."""
        if self.lost:
            return False
        result = await self.col.update_one(self.mine(), {"$set": {UNTIL: now_ms() + self.lease_ms}})
        if result.matched_count == 0:
            self.lost = True
        return not self.lost

    async def __aenter__(self) -> Lease:
        self._task = asyncio.create_task(self._keep(), name=f"lease {self.doc_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # wait() neither raises the task's cancellation here nor swallows our own.
            await asyncio.wait([task])

    async def _keep(self) -> None:
        interval = self.lease_ms / 3 / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                result = await self.col.update_one(
                    self.mine(), {"$set": {UNTIL: now_ms() + self.lease_ms}}
                )
            except Exception:
                # MongoDB is away: try again next time; if it stays away for longer than the
                # lease, another process may take over, and the next renewal says so.
                log.warning(
                    "lease %s/%s: renewal failed", self.col.name, self.doc_id, exc_info=True
                )
                continue
            if result.matched_count == 0:
                self.lost = True
                log.warning(
                    "lease %s/%s: lost (another process took it over); this holder's final "
                    "writes will not apply",
                    self.col.name,
                    self.doc_id,
                )
                return

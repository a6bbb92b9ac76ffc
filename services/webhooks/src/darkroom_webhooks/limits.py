"""Who may send to an endpoint right now: per-endpoint limits that hold across every dispatcher
replica, and a per-replica cap that keeps one slow endpoint from taking all of a replica's work.

* ``max_concurrency`` (set on the endpoint): at most that many attempts in flight to it, over all
  replicas. Each in-flight attempt holds one of the endpoint's slot documents in MongoDB under a
  lease, so a replica that dies mid-attempt frees its slot when the lease ends.
* ``rate_limit`` (set on the endpoint, attempts per second): a counter per endpoint and second in
  MongoDB, incremented atomically; an attempt over the limit waits for a later second.
* the replica cap (a setting, always on): at most that many attempts in flight from one replica to
  one endpoint. A receiver that hangs holds only that many of the replica's messages; the rest wait
  in a defer queue, and the other endpoints' deliveries go on.

An attempt that may not go now is :class:`Limited`; the dispatcher defers it (not counted as an
attempt).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from dataclasses import dataclass

from darkroom_kit.clock import now_ms
from darkroom_kit.ids import new_id
from darkroom_kit.mongo import Database, Document, insert_new
from pymongo import ASCENDING, ReturnDocument

SLOTS = "webhook_endpoint_slots"  # webhook-dispatch
RATE_WINDOWS = "webhook_rate_windows"  # webhook-dispatch

# A rate-limited backlog is spread over this much of the next seconds, so it does not all come
# back at the start of the same second.
RATE_SPREAD_MS = 1000
# How long a replica waits before it asks again for a busy endpoint (escalating per message).
BUSY_WAIT_MS = 250


class Limited(Exception):
    def __init__(self, limit: str, wait_ms: int, *, escalate: bool) -> None:
        super().__init__(f"{limit} limit reached")
        self.limit = limit  # replica, rate or concurrency
        self.wait_ms = wait_ms
        self.escalate = escalate


@dataclass(frozen=True, slots=True)
class Ticket:
    endpoint_id: str
    # The shared slot this attempt holds (max_concurrency), and the lease it holds it by: one
    # per attempt, so that releasing it can never free a slot someone else took meanwhile.
    slot_id: str | None = None
    holder: str | None = None


class EndpointGate:
    def __init__(self, db: Database, replica_cap: int, lease_ms: int) -> None:
        self._slots = db[SLOTS]
        self._windows = db[RATE_WINDOWS]
        self._replica_cap = replica_cap
        self._lease_ms = lease_ms
        self._in_flight: Counter[str] = Counter()
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._seeded: set[tuple[str, int]] = set()

    async def ensure_indexes(self) -> None:
        await self._slots.create_index([("endpoint_id", ASCENDING), ("until_ms", ASCENDING)])
        await self._windows.create_index([("window_ms", ASCENDING)])

    def in_flight(self, endpoint_id: str) -> int:
        return self._in_flight[endpoint_id]

    @staticmethod
    def unlimited(endpoint: Document) -> bool:
        """No shared limit: an attempt needs only a place under the replica cap."""
        return not endpoint.get("max_concurrency") and not endpoint.get("rate_limit")

    def check_room(self, endpoint_id: str) -> None:
        """:class:`Limited` when this replica already sends all it may to the endpoint."""
        if self._in_flight[endpoint_id] >= self._replica_cap:
            raise Limited("replica", BUSY_WAIT_MS, escalate=True)

    def try_enter_local(self, endpoint_id: str) -> Ticket | None:
        """A place under the replica cap if there is one now."""
        if self._in_flight[endpoint_id] < self._replica_cap:
            self._in_flight[endpoint_id] += 1
            return Ticket(endpoint_id)
        return None

    async def enter_local(self, endpoint_id: str, wait_s: float) -> Ticket | None:
        """A place under the replica cap, waiting up to ``wait_s`` for one to free up: a fast
        receiver frees its places in milliseconds, a hanging one does not (None then)."""
        ticket = self.try_enter_local(endpoint_id)
        if ticket is not None:
            return ticket
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting.setdefault(endpoint_id, deque())
        queue.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), wait_s)
        except TimeoutError:
            if not waiter.done():
                waiter.cancel()
                return None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release_local(endpoint_id)  # handed over, but nobody will use it
            waiter.cancel()
            raise
        return Ticket(endpoint_id)  # the place was handed over by leave()

    async def enter(self, endpoint: Document) -> Ticket:
        """A place for one attempt to ``endpoint``, or :class:`Limited`."""
        endpoint_id = endpoint["_id"]
        self.check_room(endpoint_id)
        rate = endpoint.get("rate_limit")
        if rate:
            await self._count_rate(endpoint_id, int(rate))
        ticket = Ticket(endpoint_id)
        limit = endpoint.get("max_concurrency")
        if limit:
            ticket = await self._take_slot(endpoint_id, int(limit))
        self._in_flight[endpoint_id] += 1
        return ticket

    def _release_local(self, endpoint_id: str) -> None:
        # Hand the place straight to a waiter, if one is still waiting, else give it back.
        queue = self._waiting.get(endpoint_id)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._waiting.pop(endpoint_id, None)
        self._in_flight[endpoint_id] -= 1
        if self._in_flight[endpoint_id] <= 0:
            del self._in_flight[endpoint_id]

    async def leave(self, ticket: Ticket) -> None:
        self._release_local(ticket.endpoint_id)
        if ticket.slot_id is not None:
            await self._slots.update_one(
                {"_id": ticket.slot_id, "holder": ticket.holder}, {"$set": {"until_ms": 0}}
            )

    async def _count_rate(self, endpoint_id: str, rate: int) -> None:
        now = now_ms()
        second = now // 1000
        window = await self._windows.find_one_and_update(
            {"_id": f"{endpoint_id}:{second}"},
            {"$inc": {"n": 1}, "$set": {"endpoint_id": endpoint_id, "window_ms": second * 1000}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        if window is not None and int(window.get("n", 0)) > rate:
            wait = (second + 1) * 1000 - now + random.randrange(RATE_SPREAD_MS)
            raise Limited("rate", wait, escalate=False)

    async def _take_slot(self, endpoint_id: str, limit: int) -> Ticket:
        if (endpoint_id, limit) not in self._seeded:
            await self._seed(endpoint_id, limit)
        holder = new_id("lease")
        now = now_ms()
        slot = await self._slots.find_one_and_update(
            {"endpoint_id": endpoint_id, "k": {"$lt": limit}, "until_ms": {"$lt": now}},
            {"$set": {"until_ms": now + self._lease_ms, "holder": holder}},
        )
        if slot is None:
            raise Limited("concurrency", BUSY_WAIT_MS, escalate=True)
        return Ticket(endpoint_id, str(slot["_id"]), holder)

    async def _seed(self, endpoint_id: str, limit: int) -> None:
        # One document per slot, made once; every replica may try, the unique _id keeps one.
        await insert_new(
            self._slots,
            [
                {"_id": f"{endpoint_id}:{k}", "endpoint_id": endpoint_id, "k": k, "until_ms": 0}
                for k in range(limit)
            ],
        )
        self._seeded.add((endpoint_id, limit))

    async def prune(self, before_ms: int) -> int:
        result = await self._windows.delete_many({"window_ms": {"$lt": before_ms}})
        return int(result.deleted_count)

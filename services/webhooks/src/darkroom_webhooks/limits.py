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

A place is held with ``async with gate.entered(endpoint) as ticket`` (or ``gate.holding(ticket)``
for one taken otherwise): every way out of the block gives it back, and giving it back is
idempotent, so an attempt may release its place as soon as its request is answered and the
block's exit is then a no-op.

What survives a restart: nothing is held by a process that is gone. The replica cap is a counter
in this process's memory, so a new process starts with every place free. The shared slots are
leases in MongoDB (``until_ms``): a slot whose holder died is free again when its lease ends, at
most ``lease_ms`` after the holder's last renewal, and taking a slot asks only for an ended lease,
never for the holder. Rate windows are counters of past seconds, never held. So the concurrency
state after any restart is what the records say: the slots whose lease has not ended (the
``webhook_endpoint_slots_leased`` gauge), plus each live replica's own places
(``webhook_endpoint_places_in_use``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

from darkroom_kit.clock import now_ms
from darkroom_kit.ids import new_id
from darkroom_kit.mongo import Database, insert_new
from darkroom_kit.stored.endpoints import EndpointRecord
from darkroom_kit.stored.limits import RateWindow, Slot
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pymongo import ASCENDING, ReturnDocument

log = logging.getLogger(__name__)

SLOTS = "webhook_endpoint_slots"  # webhook-dispatch
RATE_WINDOWS = "webhook_rate_windows"  # webhook-dispatch

# A rate-limited backlog is spread over this much of the next seconds, so it does not all come
# back at the start of the same second.
RATE_SPREAD_MS = 1000
# How long a replica waits before it asks again for a busy endpoint (escalating per message).
BUSY_WAIT_MS = 250
# An endpoint whose places all came back is still reported (at 0) this long, so that a scrape
# sees it drop to 0 instead of its series just vanishing.
IDLE_REPORT_S = 300.0


class Limited(Exception):
    def __init__(self, limit: str, wait_ms: int, *, escalate: bool) -> None:
        super().__init__(f"{limit} limit reached")
        self.limit = limit  # replica, rate or concurrency
        self.wait_ms = wait_ms
        self.escalate = escalate


@dataclass(slots=True, eq=False)
class Ticket:
    endpoint_id: str
    # The shared slot this attempt holds (max_concurrency), and the lease it holds it by: one
    # per attempt, so that releasing it can never free a slot someone else took meanwhile.
    slot_id: str | None = None
    holder: str | None = None
    # Set by the first release: a second one (the block's exit after an early release) is a
    # no-op, never a place given back twice.
    released: bool = False


class EndpointGate:
    def __init__(self, db: Database, replica_cap: int, lease_ms: int) -> None:
        self._slots = db[SLOTS]
        self._windows = db[RATE_WINDOWS]
        self._replica_cap = replica_cap
        self._lease_ms = lease_ms
        self._in_flight: Counter[str] = Counter()
        self._idle_since: dict[str, float] = {}  # endpoints whose places all came back, when
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._seeded: set[tuple[str, int]] = set()

    async def ensure_indexes(self) -> None:
        await self._slots.create_index([("endpoint_id", ASCENDING), ("until_ms", ASCENDING)])
        await self._windows.create_index([("window_ms", ASCENDING)])

    def in_flight(self, endpoint_id: str) -> int:
        return self._in_flight[endpoint_id]

    def places_in_use(self) -> Iterator[tuple[str, int]]:
        """(endpoint id, places this replica holds) for each endpoint holding some, and at 0 for
        those that gave their last one back lately."""
        cutoff = time.monotonic() - IDLE_REPORT_S
        for endpoint_id, since in list(self._idle_since.items()):
            if since < cutoff:
                del self._idle_since[endpoint_id]
            else:
                yield endpoint_id, 0
        yield from list(self._in_flight.items())

    @contextlib.asynccontextmanager
    async def entered(self, endpoint: EndpointRecord) -> AsyncIterator[Ticket]:
        """A place for one attempt to ``endpoint`` (or :class:`Limited`), given back on every
        way out of the block."""
        ticket = await self.enter(endpoint)
        async with self.holding(ticket):
            yield ticket

    @contextlib.asynccontextmanager
    async def holding(self, *tickets: Ticket) -> AsyncIterator[None]:
        """Gives back on every way out of the block the places of ``tickets`` not given back in
        it."""
        try:
            yield
        finally:
            await self.leave_all(tickets)

    @contextlib.asynccontextmanager
    async def local_places(
        self, endpoint_ids: Iterable[str], wait_s: float
    ) -> AsyncIterator[dict[str, Ticket]]:
        """Places under the replica cap for several endpoints at once: taken now where there is
        room, else after waiting up to ``wait_s`` (an endpoint missing from the answer got none).
        Every place taken, also one handed over while the block is being cancelled, is given
        back on the way out unless the block gave it back itself."""
        taken: dict[str, Ticket] = {}

        async def wait_for(endpoint_id: str) -> None:
            ticket = await self.enter_local(endpoint_id, wait_s)
            if ticket is not None:  # no await between the hand-over and this: nothing lost
                taken[endpoint_id] = ticket

        try:
            waits = []
            for endpoint_id in endpoint_ids:
                ticket = self.try_enter_local(endpoint_id)
                if ticket is not None:
                    taken[endpoint_id] = ticket
                else:
                    waits.append(endpoint_id)
            if waits:
                await asyncio.gather(*(wait_for(eid) for eid in waits))
            yield taken
        finally:
            await self.leave_all(taken.values())

    async def leave_all(self, tickets: Iterable[Ticket]) -> None:
        # Every local place first (no await: a cancellation cannot split them), then the slots.
        held = [t for t in tickets if not t.released]
        for ticket in held:
            ticket.released = True
            self._release_local(ticket.endpoint_id)
        for ticket in held:
            await self._free_slot(ticket)

    @staticmethod
    def unlimited(endpoint: EndpointRecord) -> bool:
        """No shared limit: an attempt needs only a place under the replica cap."""
        return endpoint.unlimited

    def check_room(self, endpoint_id: str) -> None:
        """:class:`Limited` when this replica already sends all it may to the endpoint."""
        if self._in_flight[endpoint_id] >= self._replica_cap:
            raise Limited("replica", BUSY_WAIT_MS, escalate=True)

    def try_enter_local(self, endpoint_id: str) -> Ticket | None:
        """A place under the replica cap if there is one now."""
        if self._in_flight[endpoint_id] < self._replica_cap:
            self._take_local(endpoint_id)
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

    async def enter(self, endpoint: EndpointRecord) -> Ticket:
        """A place for one attempt to ``endpoint``, or :class:`Limited`."""
        endpoint_id = endpoint.id
        self.check_room(endpoint_id)
        rate = endpoint.rate_limit
        if rate:
            await self._count_rate(endpoint_id, int(rate))
        ticket = Ticket(endpoint_id)
        limit = endpoint.max_concurrency
        if limit:
            ticket = await self._take_slot(endpoint_id, int(limit))
        self._take_local(endpoint_id)
        return ticket

    def _take_local(self, endpoint_id: str) -> None:
        self._in_flight[endpoint_id] += 1
        self._idle_since.pop(endpoint_id, None)

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
            self._idle_since[endpoint_id] = time.monotonic()

    async def leave(self, ticket: Ticket) -> None:
        """Give the ticket's place back; once only, however often it is called."""
        await self.leave_all((ticket,))

    async def renew(self, ticket: Ticket) -> None:
        """Push the lease of the ticket's slot forward (while its attempt runs)."""
        if ticket.slot_id is not None and not ticket.released:
            await self._slots.update_one(
                {"_id": ticket.slot_id, "holder": ticket.holder},
                {"$set": {"until_ms": now_ms() + self._lease_ms}},
            )

    async def _free_slot(self, ticket: Ticket) -> None:
        if ticket.slot_id is None:
            return
        try:
            await self._slots.update_one(
                {"_id": ticket.slot_id, "holder": ticket.holder}, {"$set": {"until_ms": 0}}
            )
        except Exception:
            # The slot is free anyway when its lease ends (no renewal keeps it any more); an
            # error here must not cost the attempt that just ran its result.
            log.warning(
                "could not free slot %s (free when its lease ends)", ticket.slot_id, exc_info=True
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
        if window is not None and RateWindow.of(window).n > rate:
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
        return Ticket(endpoint_id, Slot.of(slot).id, holder)

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


class PlacesCollector(Collector):
    """``webhook_endpoint_places_in_use``: read from the gate at scrape time, so it is never out
    of step with what the gate holds."""

    def __init__(self, gate: EndpointGate) -> None:
        self._gate = gate

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "webhook_endpoint_places_in_use",
            "Attempts this replica has in flight to each endpoint (its places under the replica "
            "cap); endpoints that gave their last place back lately show 0",
            labels=["endpoint_id"],
        )
        for endpoint_id, n in self._gate.places_in_use():
            family.add_metric([endpoint_id], n)
        yield family


async def slots_leased(db: Database) -> dict[str, int]:
    """Shared slots whose lease has not ended, per endpoint (over every replica)."""
    leased: Counter[str] = Counter()
    async for doc in db[SLOTS].find({"until_ms": {"$gt": now_ms()}}, {"endpoint_id": 1}):
        leased[Slot.of(doc).endpoint_id] += 1
    return dict(leased)

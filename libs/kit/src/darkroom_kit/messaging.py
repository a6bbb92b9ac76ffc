"""RabbitMQ messaging: envelopes, topology, a confirming publisher and consumers with an explicit
ack policy.

Topology (names carry the ``amqp_namespace`` prefix, here ``ns``):

* ``ns.events`` (topic): public facts, routing key = message type (``photo.uploaded`` ...).
* ``ns.commands`` (topic): requests for work (``repair.requested``, ``webhook.attempt`` ...).
* ``ns.dead-letter`` (direct): each consumer queue dead-letters here with its own name as key into
  ``<queue>.dead``.
* Each consumer owns a durable quorum queue ``ns.<service>.<name>`` with an ``x-delivery-limit``,
  plus one retry-tier queue per delay (``<queue>.retry.<ms>ms``): a message waits there for the
  queue's TTL, then is dead-lettered back to its consumer queue. RabbitMQ 3.10 has no native delayed
  delivery; tiers keep waiting messages durable across restarts of any service.
* A consumer may also have defer queues (``<queue>.defer.<ms>ms``): a message its handler cannot
  take *now* (a rate or concurrency limit) waits there without counting as a failed attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiohttp import web
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ValidationError

from darkroom_kit.clock import ms_to_iso, now_ms
from darkroom_kit.httpapp import DRAIN
from darkroom_kit.ids import new_id
from darkroom_kit.logs import bound, ids_in
from darkroom_kit.metrics import ConsumerMetrics
from darkroom_kit.payloads import payloads_for
from darkroom_kit.settings import CommonSettings
from darkroom_kit.tracing import carrier, context_of, tracer

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-darkroom-attempt"
DEFERRED_HEADER = "x-darkroom-deferred"
# When the message entered the queue it is in (ms since the epoch): its consumer measures the
# age of the oldest message it holds from it. A message back from a retry tier or a defer queue
# entered its queue when the broker moved it back (its ``x-death`` time).
PUBLISHED_HEADER = "x-darkroom-published-ms"


class Envelope(BaseModel):
    """Every message: a unique id (also the AMQP ``message_id``), a type, a time and data."""

    id: str
    type: str
    time: str
    data: dict[str, Any]

    @classmethod
    def new(cls, type_: str, data: dict[str, Any]) -> Envelope:
        return cls(id=new_id("msg"), type=type_, time=ms_to_iso(now_ms()) or "", data=data)


@dataclass(frozen=True, slots=True)
class Topology:
    namespace: str

    @property
    def events(self) -> str:
        return f"{self.namespace}.events"

    @property
    def commands(self) -> str:
        return f"{self.namespace}.commands"

    @property
    def dead_letter(self) -> str:
        return f"{self.namespace}.dead-letter"

    @property
    def published(self) -> frozenset[str]:
        """The exchanges services publish to (an outbox entry names one of them)."""
        return frozenset({self.events, self.commands})

    def queue(self, service: str, name: str) -> str:
        return f"{self.namespace}.{service}.{name}"


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A consumer's queue: where it binds and how long it waits before each retry."""

    name: str
    exchange: str
    routing_keys: tuple[str, ...]
    retry_delays_ms: tuple[int, ...] = (1_000, 10_000, 60_000)
    # Spread each retry over delay * (1 +- jitter), so that the failures of one burst do not all
    # come back at the same moment. Each tier is then a few queues of fixed TTL (a message TTL
    # per message would wait behind a longer one at the head of its queue).
    jitter: float = 0.0
    jitter_steps: int = 5
    # Waits for a message that is not failing but cannot be handled yet (see :class:`Defer`).
    defer_delays_ms: tuple[int, ...] = ()

    def defer_queue(self, delay_ms: int) -> str:
        return f"{self.name}.defer.{delay_ms}ms"

    def defer_delay(self, at_least_ms: int, deferrals: int, escalate: bool) -> int:
        """The shortest defer queue at least ``at_least_ms`` long; when escalating, also at least
        twice as long as the previous wait of this message, so a backlog held back by a busy
        receiver cycles ever more slowly instead of spinning."""
        if escalate and self.defer_delays_ms:
            at_least_ms = max(at_least_ms, self.defer_delays_ms[0] * 2 ** min(deferrals, 16))
        longer = [d for d in self.defer_delays_ms if d >= at_least_ms]
        return min(longer) if longer else max(self.defer_delays_ms)

    def retry_queue(self, delay_ms: int) -> str:
        return f"{self.name}.retry.{delay_ms}ms"

    def tier_delays(self, delay_ms: int) -> tuple[int, ...]:
        """The queue delays that make up the tier of ``delay_ms``."""
        if self.jitter <= 0 or self.jitter_steps < 2:
            return (delay_ms,)
        low, high = delay_ms * (1 - self.jitter), delay_ms * (1 + self.jitter)
        step = (high - low) / (self.jitter_steps - 1)
        return tuple(dict.fromkeys(round(low + i * step) for i in range(self.jitter_steps)))

    def all_retry_delays(self) -> list[int]:
        return list(dict.fromkeys(d for t in self.retry_delays_ms for d in self.tier_delays(t)))

    def retry_delay(self, attempt: int, at_least_ms: int | None = None) -> int:
        """The queue delay for the retry after ``attempt`` (1-based): a random one of its tier,
        or, when the receiver asked to wait (``Retry-After``), the shortest queue delay that is
        at least that long (the longest there is, if none is)."""
        if at_least_ms is not None:
            longer = [d for d in self.all_retry_delays() if d >= at_least_ms]
            return min(longer) if longer else max(self.all_retry_delays())
        return random.choice(self.tier_delays(self.retry_delays_ms[attempt - 1]))

    def retry_route(
        self, attempt: int, at_least_ms: int | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Where the retry after ``attempt`` waits (a retry-tier queue, by the default exchange)
        and the headers it carries, for the consumer and for anyone who retries on its behalf."""
        queue = self.retry_queue(self.retry_delay(attempt, at_least_ms))
        return queue, {ATTEMPT_HEADER: attempt + 1}

    @property
    def dead_queue(self) -> str:
        return f"{self.name}.dead"

    def all_queue_names(self) -> list[str]:
        return [
            self.name,
            self.dead_queue,
            *(self.retry_queue(d) for d in self.all_retry_delays()),
            *(self.defer_queue(d) for d in self.defer_delays_ms),
        ]


async def declare_exchanges(channel: AbstractChannel, topology: Topology) -> None:
    await channel.declare_exchange(topology.events, aio_pika.ExchangeType.TOPIC, durable=True)
    await channel.declare_exchange(topology.commands, aio_pika.ExchangeType.TOPIC, durable=True)
    await channel.declare_exchange(topology.dead_letter, aio_pika.ExchangeType.DIRECT, durable=True)


async def declare_consumer_queue(
    channel: AbstractChannel, topology: Topology, spec: QueueSpec, delivery_limit: int
) -> AbstractQueue:
    await declare_exchanges(channel, topology)
    queue = await channel.declare_queue(
        spec.name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": topology.dead_letter,
            "x-dead-letter-routing-key": spec.name,
            "x-delivery-limit": delivery_limit,
        },
    )
    exchange = await channel.get_exchange(spec.exchange, ensure=False)
    for key in spec.routing_keys:
        await queue.bind(exchange, key)
    dead = await channel.declare_queue(
        spec.dead_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead.bind(await channel.get_exchange(topology.dead_letter, ensure=False), spec.name)
    waits = [(spec.retry_queue(d), d) for d in spec.all_retry_delays()]
    waits += [(spec.defer_queue(d), d) for d in spec.defer_delays_ms]
    for name, delay in waits:
        await channel.declare_queue(
            name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-message-ttl": delay,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": spec.name,
                # A waiting retry must not be lost when it moves back to the work queue.
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
    return queue


async def delete_queues(connection: aio_pika.abc.AbstractConnection, names: list[str]) -> None:
    """Empty and delete queues (test and benchmark cleanup), those that others dead-letter into
    last: give the waiting queues first. Deleting a quorum queue that another one still
    dead-letters into (at least once) while messages wait there hung RabbitMQ 3.10."""
    for name in names:
        channel = await connection.channel()
        try:
            queue = await channel.get_queue(name, ensure=True)
        except aio_pika.exceptions.ChannelClosed:
            continue  # not there (never declared, or already gone)
        try:
            await queue.purge()
            await queue.delete(if_unused=False, if_empty=False)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()


class Publisher:
    """Publishes persistent, mandatory messages and waits for the broker's confirm."""

    def __init__(
        self,
        channel: AbstractChannel,
        metrics: ConsumerMetrics | None = None,
        *,
        service: str | None = None,
    ) -> None:
        self._channel = channel
        self._exchanges: dict[str, AbstractExchange] = {}
        self._metrics = metrics
        self._tracer = tracer(service or (metrics.service if metrics else "darkroom"))

    @property
    def is_open(self) -> bool:
        """Whether a publish now has a channel (a robust one reopens after a reconnect)."""
        return not self._channel.is_closed

    async def _exchange(self, name: str) -> AbstractExchange:
        if name == "":
            return self._channel.default_exchange
        exchange = self._exchanges.get(name)
        if exchange is None:
            exchange = await self._channel.get_exchange(name, ensure=False)
            self._exchanges[name] = exchange
        return exchange

    async def publish(
        self,
        exchange: str,
        envelope: Envelope,
        routing_key: str | None = None,
        headers: dict[str, Any] | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> None:
        """``trace_context``: the trace the message belongs to, when not the current one (a
        message the outbox kept since the request that wrote it)."""
        with self._tracer.start_as_current_span(
            f"publish {envelope.type}",
            context=context_of(trace_context) if trace_context else None,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "send",
                "messaging.destination.name": exchange or routing_key or "",
                "messaging.message.id": envelope.id,
            },
        ):
            message = aio_pika.Message(
                body=envelope.model_dump_json().encode(),
                message_id=envelope.id,
                type=envelope.type,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={**(headers or {}), **carrier(), PUBLISHED_HEADER: now_ms()},
            )
            target = await self._exchange(exchange)
            # mandatory + on_return_raises: an unroutable message is an error, never silently
            # dropped.
            await target.publish(message, routing_key or envelope.type, mandatory=True)
        if self._metrics is not None:
            self._metrics.published.labels(self._metrics.service, exchange or "default").inc()

    async def publish_many(self, exchange: str, envelopes: Sequence[Envelope]) -> None:
        """Publish with the confirms pipelined (one round trip instead of one per message)."""
        for start in range(0, len(envelopes), 500):
            await asyncio.gather(
                *(self.publish(exchange, e) for e in envelopes[start : start + 500])
            )


class Retry(Exception):
    """The handler failed in a way that may succeed later: retry after the next tier's delay,
    or after at least ``at_least_ms`` when the other side said how long to wait."""

    def __init__(self, reason: str, at_least_ms: int | None = None) -> None:
        super().__init__(reason)
        self.at_least_ms = at_least_ms


class Reject(Exception):
    """The message can never succeed: dead-letter it now."""


class Defer(Exception):
    """The handler cannot take the message yet (a limit is reached), nothing failed: park it in
    a defer queue for at least ``at_least_ms`` without counting an attempt. With ``escalate``,
    each further deferral of the same message waits longer (see :meth:`QueueSpec.defer_delay`)."""

    def __init__(self, reason: str, at_least_ms: int, *, escalate: bool = False) -> None:
        super().__init__(reason)
        self.at_least_ms = at_least_ms
        self.escalate = escalate


Handler = Callable[[Envelope, int], Awaitable[None]]
"""A handler of raw envelopes (``data`` a dict), and the attempt number."""

P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Message(Generic[P]):
    """A message as a typed handler receives it: the envelope, its ``data`` as the validated
    model of its type (validated once, by the consumer, before the handler runs) and the
    attempt number (1 for the first delivery, counted on by each retry tier)."""

    envelope: Envelope
    payload: P
    attempt: int


@dataclass(frozen=True, slots=True)
class Typed:
    """A handler that takes a :class:`Message`: its consumer must know the payload models
    (``payloads``), and hands each handler the model it validated."""

    handle: Callable[[Message[Any]], Awaitable[None]]


def typed(handle: Callable[[Message[Any]], Awaitable[None]]) -> Typed:
    return Typed(handle)


@dataclass
class Consumer:
    """Consumes one queue. Ack policy, made explicit:

    * handler returns: ack;
    * the body is not an envelope, its type is not one the queue takes or its data does not
      validate against the type's model (see ``payloads``): dead-letter it before the handler
      runs (outcome ``invalid``);
    * handler raises :class:`Reject`: dead-letter it;
    * handler raises :class:`Retry` or anything unexpected: republish to the next retry tier (with
      a confirm), then ack; past the last tier, dead-letter;
    * handler raises :class:`Defer`: republish to a defer queue with the same attempt number
      (with a confirm), then ack;
    * handler cancelled (shutdown): neither ack nor reject; the broker redelivers it elsewhere.
    """

    connection: AbstractRobustConnection
    topology: Topology
    spec: QueueSpec
    handler: Handler | Typed
    metrics: ConsumerMetrics
    prefetch: int = 64
    delivery_limit: int = 20
    # The model of each message type this queue takes: ``data`` is validated before the handler
    # runs, and a message of another type or with invalid data is dead-lettered at once (it
    # can never succeed; retried, it would cycle through every tier). None: not checked.
    payloads: Mapping[str, type[BaseModel]] | None = None
    # How a delivery's body becomes an envelope, for a queue fed by a foreign producer (a
    # storage server's bucket notifications): it raises ValueError for a body that can never
    # be one, which is dead-lettered at once. It must also read back the envelopes it made,
    # since a retried message returns from its retry queue as one. None: the body is an
    # envelope.
    decode: Callable[[AbstractIncomingMessage], Envelope] | None = None
    _channel: AbstractChannel | None = None
    _queue: AbstractQueue | None = None
    _tag: str | None = None
    _publisher: Publisher | None = None
    _in_flight: set[asyncio.Task[None]] = field(default_factory=set)
    # When each message in hand entered the queue (seconds since the epoch), by its task.
    _entered: dict[asyncio.Task[None], float] = field(default_factory=dict)
    _counted: dict[str, Any] = field(default_factory=dict)
    _timed: Any = None
    _stopped: bool = False

    async def start(self) -> None:
        if isinstance(self.handler, Typed) and self.payloads is None:
            raise ValueError("a typed handler needs the payload models of its queue")
        self._channel = await self.connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        await self._channel.set_qos(prefetch_count=self.prefetch)
        self._queue = await declare_consumer_queue(
            self._channel, self.topology, self.spec, self.delivery_limit
        )
        self._publisher = Publisher(self._channel, service=self.metrics.service)
        self._tracer = tracer(self.metrics.service)
        m = self.metrics
        m.queue_oldest_age.labels(m.service, self.spec.name).set_function(self.oldest_age_seconds)
        self._tag = await self._queue.consume(self._on_message)

    def oldest_age_seconds(self) -> float:
        """How long the oldest message this consumer holds has been in its queue; 0 when it
        holds none. The queue is first in, first out and the consumer takes up to its prefetch
        at once, so while it runs the oldest message of the queue is one it holds."""
        if not self._entered:
            return 0.0
        return max(0.0, time.time() - min(self._entered.values()))

    async def measure(self) -> None:
        """The messages waiting in the queue (ready, not yet delivered), for its gauge."""
        channel = await self.connection.channel()
        try:
            queue = await channel.declare_queue(self.spec.name, passive=True)
            waiting = queue.declaration_result.message_count or 0
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        m = self.metrics
        m.queue_messages.labels(m.service, self.spec.name).set(waiting)

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking messages, let those in hand finish within ``grace_seconds`` (all of it
        included), cancel the rest unacknowledged and close the channel: the broker redelivers
        what was not acknowledged. Calling it again does nothing more."""
        if self._stopped:
            # The drain stopped it already: its grace period is spent, not to be spent again.
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        # What a cancelled handler needs to unwind; the grace period includes it.
        unwind = min(2.0, grace_seconds / 4)
        if self._queue is not None and self._tag is not None:
            tag, self._tag = self._tag, None
            with contextlib.suppress(Exception):
                # Bounded: while the connection is down this would wait for the reconnect.
                await asyncio.wait_for(self._queue.cancel(tag), max(0.1, grace_seconds / 4))
        # Deliveries that arrived before the cancel are tasks not yet started: let them enter.
        await asyncio.sleep(0)
        finished = 0
        while self._in_flight and (left := deadline - unwind - loop.time()) > 0:
            done, _ = await asyncio.wait(set(self._in_flight), timeout=left)
            finished += len(done)
        pending = set(self._in_flight)
        if finished or pending:
            log.info(
                "consumer stopped: %d message(s) finished, %d cancelled for redelivery",
                finished,
                len(pending),
                extra={"queue": self.spec.name},
            )
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=max(0.1, deadline - loop.time()))
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
            self._entered[task] = _entered_queue_s(message)
        started = time.perf_counter()
        outcome = "error"
        try:
            outcome = await self._handle(message)
        finally:
            if task is not None:
                self._in_flight.discard(task)
                self._entered.pop(task, None)
            # Labelled children looked up once per outcome: this runs for every message.
            counted = self._counted.get(outcome)
            if counted is None:
                m = self.metrics
                counted = m.consumed.labels(m.service, self.spec.name, outcome)
                self._counted[outcome] = counted
            counted.inc()
            if self._timed is None:
                self._timed = self.metrics.handling.labels(self.metrics.service, self.spec.name)
            self._timed.observe(time.perf_counter() - started)

    async def _handle(self, message: AbstractIncomingMessage) -> str:
        try:
            if self.decode is None:
                envelope = Envelope.model_validate_json(message.body)
            else:
                envelope = self.decode(message)
        except ValueError as exc:  # a ValidationError is one
            log.error(
                "not an envelope, dead-lettered: %s",
                _errors(exc) if isinstance(exc, ValidationError) else str(exc)[:500],
                extra={"queue": self.spec.name, "message_id": message.message_id},
            )
            await message.reject(requeue=False)
            return "invalid"
        payload = self._validated(envelope)
        if isinstance(payload, str):
            problem = payload
            log.error(
                "invalid %s message, dead-lettered: %s",
                envelope.type,
                problem,
                extra={"queue": self.spec.name, "message_id": envelope.id, "type": envelope.type},
            )
            await message.reject(requeue=False)
            return "invalid"
        raw_attempt = (message.headers or {}).get(ATTEMPT_HEADER, 1)
        attempt = raw_attempt if isinstance(raw_attempt, int) and raw_attempt > 0 else 1
        # Every line logged while it is handled names the message and what it is about, and
        # belongs to the trace of whatever sent it.
        with (
            bound(
                message_id=envelope.id,
                message_type=envelope.type,
                queue=self.spec.name,
                **ids_in(envelope.data),
            ),
            self._tracer.start_as_current_span(
                f"process {envelope.type}",
                context=context_of(message.headers),
                kind=SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "rabbitmq",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": self.spec.name,
                    "messaging.message.id": envelope.id,
                    "darkroom.attempt": attempt,
                },
            ) as span,
        ):
            started = time.perf_counter()
            outcome = await self._handle_valid(message, envelope, payload, attempt)
            span.set_attribute("darkroom.outcome", outcome)
            if outcome in ("acked", "deferred"):
                log.info(
                    "message %s",
                    outcome,
                    extra={"attempt": attempt, "handling_ms": _ms_since(started)},
                )
            return outcome

    async def _handle_valid(
        self,
        message: AbstractIncomingMessage,
        envelope: Envelope,
        payload: BaseModel | None,
        attempt: int,
    ) -> str:
        try:
            if isinstance(self.handler, Typed):
                assert payload is not None  # start() makes sure the models are known
                await self.handler.handle(Message(envelope, payload, attempt))
            else:
                await self.handler(envelope, attempt)
        except asyncio.CancelledError:
            raise
        except Defer as exc:
            return await self._defer(message, envelope, attempt, exc)
        except Reject as exc:
            log.warning(
                "message dead-lettered: %s",
                exc,
                extra={"queue": self.spec.name, "message_id": envelope.id, "type": envelope.type},
            )
            await message.reject(requeue=False)
            return "dead_lettered"
        except Exception as exc:
            if not isinstance(exc, Retry):
                log.exception(
                    "handler failed", extra={"queue": self.spec.name, "message_id": envelope.id}
                )
            return await self._retry_later(message, envelope, attempt, exc)
        await message.ack()
        return "acked"

    def _validated(self, envelope: Envelope) -> BaseModel | str | None:
        """The envelope's data as its type's model; why it cannot be handled (a string); or
        None when the queue checks nothing."""
        if self.payloads is None:
            return None
        model = self.payloads.get(envelope.type)
        if model is None:
            return f"type {envelope.type!r} is not one this queue takes"
        try:
            return model.model_validate(envelope.data)
        except ValidationError as exc:
            return _errors(exc)

    async def _defer(
        self, message: AbstractIncomingMessage, envelope: Envelope, attempt: int, exc: Defer
    ) -> str:
        if not self.spec.defer_delays_ms:
            return await self._retry_later(message, envelope, attempt, Retry(str(exc)))
        raw = (message.headers or {}).get(DEFERRED_HEADER, 0)
        deferrals = raw if isinstance(raw, int) and raw > 0 else 0
        delay = self.spec.defer_delay(exc.at_least_ms, deferrals, exc.escalate)
        return await self._park(
            message,
            envelope,
            self.spec.defer_queue(delay),
            # Only escalating waits count: a wait for a lease must not lengthen a later one
            # for a busy endpoint.
            {ATTEMPT_HEADER: attempt, DEFERRED_HEADER: deferrals + (1 if exc.escalate else 0)},
            "deferred",
        )

    async def _park(
        self,
        message: AbstractIncomingMessage,
        envelope: Envelope,
        queue: str,
        headers: dict[str, Any],
        outcome: str,
    ) -> str:
        assert self._publisher is not None
        try:
            await self._publisher.publish("", envelope, routing_key=queue, headers=headers)
        except Exception:
            # Could not park it: hand it back to the broker rather than lose it.
            log.exception("park publish failed; requeued", extra={"queue": self.spec.name})
            await message.nack(requeue=True)
            return "requeued"
        await message.ack()
        return outcome

    async def _retry_later(
        self, message: AbstractIncomingMessage, envelope: Envelope, attempt: int, exc: Exception
    ) -> str:
        delays = self.spec.retry_delays_ms
        if attempt > len(delays):
            log.error(
                "retries exhausted, dead-lettered: %s",
                exc,
                extra={"queue": self.spec.name, "message_id": envelope.id},
            )
            await message.reject(requeue=False)
            return "dead_lettered"
        delay_ms = self.spec.retry_delay(
            attempt, exc.at_least_ms if isinstance(exc, Retry) else None
        )
        outcome = await self._park(
            message,
            envelope,
            self.spec.retry_queue(delay_ms),
            {ATTEMPT_HEADER: attempt + 1},
            "retried",
        )
        if outcome == "retried":
            log.warning(
                "message retried in %gs: %s",
                delay_ms / 1000,
                str(exc)[:300] or type(exc).__name__,
                extra={"attempt": attempt, "delay_ms": delay_ms},
            )
        return outcome


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _entered_queue_s(message: AbstractIncomingMessage) -> float:
    """When a delivered message entered its queue: the latest time the broker dead-lettered it
    back (from a retry tier or a defer queue), or its publish time; now when neither is known."""
    headers = message.headers or {}
    entered = headers.get(PUBLISHED_HEADER)
    at = entered / 1000 if isinstance(entered, int) else time.time()
    deaths = headers.get("x-death")
    if isinstance(deaths, list):
        for death in deaths:
            when = death.get("time") if isinstance(death, dict) else None
            if isinstance(when, datetime):
                at = max(at, when.timestamp())
    return at


def _errors(exc: ValidationError, limit: int = 500) -> str:
    """A validation error for a log line: where and what, never the values (a message may be
    big, or carry what does not belong in logs), cut at ``limit`` characters."""
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '(data)'}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    text = f"{exc.error_count()} error(s): " + "; ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


AMQP_CONNECTION: web.AppKey[AbstractRobustConnection] = web.AppKey(
    "amqp_connection", AbstractRobustConnection
)
PUBLISHER: web.AppKey[Publisher] = web.AppKey("publisher", Publisher)
TOPOLOGY: web.AppKey[Topology] = web.AppKey("topology", Topology)


def amqp_ctx(
    settings: CommonSettings, metrics: ConsumerMetrics
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        connection = await aio_pika.connect_robust(
            settings.amqp_url, client_properties={"connection_name": metrics.service}
        )
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            topology = Topology(settings.amqp_namespace)
            await declare_exchanges(channel, topology)
            app[AMQP_CONNECTION] = connection
            app[TOPOLOGY] = topology
            app[PUBLISHER] = Publisher(channel, metrics)
            yield
        finally:
            await connection.close()

    return ctx


def consumer_ctx(
    settings: CommonSettings,
    spec_for: Callable[[Topology], QueueSpec],
    handler_for: Callable[[web.Application], Handler | Typed],
    metrics: ConsumerMetrics,
    payloads: Mapping[str, type[BaseModel]] | None = None,
    decode: Callable[[AbstractIncomingMessage], Envelope] | None = None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A consumer as a cleanup context: it starts after its dependencies and stops (cancel, drain,
    close) before them. It takes the message types in ``payloads`` (by default those of its
    queue's routing keys, with their models from :data:`darkroom_kit.payloads.PAYLOADS`) and
    dead-letters any other message, or one whose data does not validate. ``decode``: see
    :attr:`Consumer.decode`."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        topology = app[TOPOLOGY]
        spec = spec_for(topology)
        consumer = Consumer(
            app[AMQP_CONNECTION],
            topology,
            spec,
            handler_for(app),
            metrics,
            prefetch=settings.prefetch,
            delivery_limit=settings.delivery_limit,
            payloads=payloads if payloads is not None else payloads_for(spec.routing_keys),
            decode=decode,
        )
        await consumer.start()
        # SIGTERM stops it at once, within the service's one grace period (see httpapp.Drain);
        # the stop below is then a no-op, and is the stop of a shutdown without a drain.
        app[DRAIN].stoppers.append(consumer.stop)
        gauge = asyncio.create_task(_measure_queue(consumer, settings.queue_gauge_interval_seconds))
        try:
            yield
        finally:
            gauge.cancel()
            await consumer.stop(settings.shutdown_grace_seconds)
            with contextlib.suppress(asyncio.CancelledError):
                await gauge

    return ctx


async def _measure_queue(consumer: Consumer, interval_seconds: float) -> None:
    if interval_seconds <= 0:
        return
    while True:
        try:
            # Bounded: while the broker is away a passive declare would wait for the reconnect.
            await asyncio.wait_for(consumer.measure(), max(1.0, interval_seconds))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("queue not measured: %s", exc, extra={"queue": consumer.spec.name})
        await asyncio.sleep(interval_seconds)

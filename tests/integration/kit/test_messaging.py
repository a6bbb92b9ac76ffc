"""The consumer's ack policy against the real RabbitMQ."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from darkroom_kit.messaging import (
    Envelope,
    Publisher,
    QueueSpec,
    Reject,
    Retry,
    Topology,
    declare_exchanges,
)
from darkroom_kit.metrics import ConsumerMetrics
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from tests.factories.messaging import consuming, drain
from tests.factories.servers import QueueJanitor, Servers


async def _count(channel: aio_pika.abc.AbstractChannel, name: str) -> int:
    queue = await channel.declare_queue(name, passive=True)
    return queue.declaration_result.message_count or 0


async def test_ack_retry_and_dead_letter(
    servers: Servers, namespace: str, janitor: QueueJanitor
) -> None:
    topology = Topology(namespace)
    spec = QueueSpec(topology.queue("test", "work"), topology.events, ("thing.*",), (300, 600))
    janitor.add(spec)
    seen: dict[str, list[int]] = {}
    done = asyncio.Event()

    async def handler(envelope: Envelope, attempt: int) -> None:
        seen.setdefault(envelope.data["case"], []).append(attempt)
        case = envelope.data["case"]
        if (
            len(seen) == 4
            and len(seen.get("flaky", [])) >= 2
            and len(seen.get("hopeless", [])) >= 3
        ):
            done.set()
        if case == "poison":
            raise Reject("never")
        if case == "flaky" and attempt == 1:
            raise Retry("later")
        if case == "hopeless":
            raise RuntimeError("always broken")

    metrics = ConsumerMetrics(CollectorRegistry(), "test")
    running = consuming(servers.amqp_url, topology, spec, handler, metrics, prefetch=10)
    async with running as (consumer, channel):
        await declare_exchanges(channel, topology)
        publisher = Publisher(channel)
        for case in ("ok", "poison", "flaky", "hopeless"):
            await publisher.publish(topology.events, Envelope.new("thing.happened", {"case": case}))
        # A body that is not an envelope is dead-lettered at once.
        raw = await channel.get_exchange(topology.events)
        await raw.publish(aio_pika.Message(b"not json"), "thing.raw")
        await asyncio.wait_for(done.wait(), 15)
        await asyncio.sleep(0.5)
        await consumer.stop(5)
        assert seen["ok"] == [1]
        assert seen["poison"] == [1]
        assert seen["flaky"] == [1, 2]
        assert seen["hopeless"] == [1, 2, 3]  # first try + one per retry tier, then dead
        assert await _count(channel, spec.dead_queue) == 3  # poison, hopeless, raw


async def test_unroutable_publish_raises(
    servers: Servers, namespace: str, janitor: QueueJanitor
) -> None:
    connection = await aio_pika.connect_robust(servers.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        topology = Topology(namespace)
        await declare_exchanges(channel, topology)
        with pytest.raises(aio_pika.exceptions.DeliveryError):
            await Publisher(channel).publish(topology.events, Envelope.new("nobody.listens", {}))
    finally:
        await connection.close()


async def test_stop_waits_for_in_flight_work(
    servers: Servers, namespace: str, janitor: QueueJanitor
) -> None:
    topology = Topology(namespace)
    spec = QueueSpec(topology.queue("test", "slow"), topology.events, ("slow.*",), (1000,))
    janitor.add(spec)
    finished: list[str] = []
    started = asyncio.Event()

    async def handler(envelope: Envelope, attempt: int) -> None:
        started.set()
        await asyncio.sleep(0.5)
        finished.append(envelope.id)

    metrics = ConsumerMetrics(CollectorRegistry(), "test")
    async with consuming(servers.amqp_url, topology, spec, handler, metrics) as (consumer, channel):
        message = Envelope.new("slow.job", {})
        await Publisher(channel).publish(topology.events, message)
        await asyncio.wait_for(started.wait(), 5)
        await consumer.stop(5)
        assert finished == [message.id]
        assert await _count(channel, spec.name) == 0  # acked, not left behind


class Thing(BaseModel):
    case: str


async def test_invalid_payloads_are_dead_lettered_before_the_handler(
    servers: Servers, namespace: str, janitor: QueueJanitor, caplog: pytest.LogCaptureFixture
) -> None:
    """Data that does not validate against its type's model, and a type the queue does not
    take, are dead-lettered at once (long retry tiers: a retried one would still be waiting),
    logged with the reason and counted as ``invalid``; the handler never sees them."""
    topology = Topology(namespace)
    spec = QueueSpec(
        topology.queue("test", "typed"), topology.events, ("thing.*", "other.*"), (60_000,)
    )
    janitor.add(spec)
    seen: list[str] = []
    registry = CollectorRegistry()

    async def handler(envelope: Envelope, attempt: int) -> None:
        seen.append(envelope.data["case"])

    metrics = ConsumerMetrics(registry, "test")
    async with consuming(
        servers.amqp_url, topology, spec, handler, metrics, payloads={"thing.happened": Thing}
    ) as (consumer, channel):
        publisher = Publisher(channel)
        wrong_type = Envelope.new("thing.happened", {"case": 5})
        missing = Envelope.new("thing.happened", {"nonsense": True})
        unknown = Envelope.new("other.thing", {"case": "ok"})
        for envelope in (wrong_type, missing, unknown):
            await publisher.publish(topology.events, envelope)
        await publisher.publish(topology.events, Envelope.new("thing.happened", {"case": "ok"}))

        # Read, not counted: a quorum queue's declared message count can lag behind for long.
        dead = await drain(servers.amqp_url, spec.dead_queue, 3)
        assert sorted(m["id"] for m in dead) == sorted([wrong_type.id, missing.id, unknown.id])
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.1)
        await consumer.stop(5)
        assert seen == ["ok"]
        assert await drain(servers.amqp_url, spec.retry_queue(60_000), 1, timeout=0.5) == []
        labels = {"service": "test", "queue": spec.name, "outcome": "invalid"}
        assert registry.get_sample_value("messages_consumed_total", labels) == 3
        logged = {
            r.message_id: r.getMessage()  # type: ignore[attr-defined]
            for r in caplog.records
            if r.levelname == "ERROR" and getattr(r, "queue", None) == spec.name
        }
        assert "case: Input should be a valid string" in logged[wrong_type.id]
        assert "case: Field required" in logged[missing.id]
        assert "'other.thing' is not one this queue takes" in logged[unknown.id]


async def test_only_escalating_defers_count_towards_the_next_wait(
    servers: Servers, namespace: str, janitor: QueueJanitor
) -> None:
    """A wait that is not the message's fault and does not grow (a delivery's lease held by
    another dispatcher) leaves the count of escalating waits alone, so a later busy endpoint
    starts from the shortest wait again, not from one doubled by every lease it waited for."""
    from darkroom_kit.messaging import DEFERRED_HEADER, Defer

    topology = Topology(namespace)
    spec = QueueSpec(
        topology.queue("test", "defer"),
        topology.events,
        ("defer.*",),
        (1000,),
        defer_delays_ms=(60_000,),  # long: the parked copies are read before they come back
    )
    janitor.add(spec)

    async def handler(envelope: Envelope, attempt: int) -> None:
        raise Defer("waiting", 100, escalate=envelope.type == "defer.busy")

    metrics = ConsumerMetrics(CollectorRegistry(), "test")
    async with consuming(servers.amqp_url, topology, spec, handler, metrics) as (consumer, ch):
        publisher = Publisher(ch)
        for kind in ("defer.lease", "defer.busy"):
            await publisher.publish(topology.events, Envelope.new(kind, {}))
        queue = await ch.get_queue(spec.defer_queue(60_000))
        counts: dict[str | None, object] = {}
        for _ in range(200):
            message = await queue.get(fail=False)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            await message.ack()
            counts[message.type] = (message.headers or {}).get(DEFERRED_HEADER)
            if len(counts) == 2:
                break
        await consumer.stop(5)
    assert counts == {"defer.lease": 0, "defer.busy": 1}


async def test_a_typed_handler_gets_the_payload_validated_once(
    servers: Servers, namespace: str, janitor: QueueJanitor
) -> None:
    """A typed handler receives the model its consumer validated (not the raw data to read by
    key), with the envelope and the attempt; the data is validated once per delivery."""
    from darkroom_kit.messaging import Message, typed
    from pydantic import model_validator

    validations: list[str] = []

    class Counted(BaseModel):
        case: str

        @model_validator(mode="after")
        def _count(self) -> Counted:
            validations.append(self.case)
            return self

    topology = Topology(namespace)
    spec = QueueSpec(topology.queue("test", "typed2"), topology.events, ("typed.*",), (300,))
    janitor.add(spec)
    got: list[tuple[Counted, str, int]] = []
    done = asyncio.Event()

    async def handle(message: Message[Counted]) -> None:
        got.append((message.payload, message.envelope.type, message.attempt))
        if message.payload.case == "flaky" and message.attempt == 1:
            raise Retry("once more")
        if len(got) == 3:
            done.set()

    metrics = ConsumerMetrics(CollectorRegistry(), "test")
    async with consuming(
        servers.amqp_url,
        topology,
        spec,
        typed(handle),
        metrics,
        payloads={"typed.thing": Counted},
    ) as (consumer, channel):
        publisher = Publisher(channel)
        for case in ("ok", "flaky"):
            await publisher.publish(topology.events, Envelope.new("typed.thing", {"case": case}))
        await asyncio.wait_for(done.wait(), 15)
        await consumer.stop(5)
    assert [(p.case, t, a) for p, t, a in got] == [
        ("ok", "typed.thing", 1),
        ("flaky", "typed.thing", 1),
        ("flaky", "typed.thing", 2),
    ]
    assert all(isinstance(p, Counted) for p, _, _ in got)
    assert sorted(validations) == ["flaky", "flaky", "ok"]  # once per delivery, not twice


async def test_a_typed_handler_needs_its_payload_models(
    servers: Servers, namespace: str, janitor: QueueJanitor
) -> None:
    from darkroom_kit.messaging import Message, typed

    async def handle(message: Message[BaseModel]) -> None:
        raise AssertionError("never called")

    topology = Topology(namespace)
    spec = QueueSpec(topology.queue("test", "untyped"), topology.events, ("u.*",), (300,))
    metrics = ConsumerMetrics(CollectorRegistry(), "test")
    with pytest.raises(ValueError, match="payload models"):
        async with consuming(servers.amqp_url, topology, spec, typed(handle), metrics):
            pass


async def test_queue_gauges_show_what_waits_and_how_old_the_oldest_is(
    servers: Servers, namespace: str, janitor: QueueJanitor
) -> None:
    topology = Topology(namespace)
    spec = QueueSpec(topology.queue("test", "gauged"), topology.events, ("gauged.*",), (300,))
    janitor.add(spec)
    release = asyncio.Event()
    taken = asyncio.Event()

    async def handler(envelope: Envelope, attempt: int) -> None:
        taken.set()
        await release.wait()

    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry, "test")

    def gauge(name: str) -> float | None:
        return registry.get_sample_value(name, {"service": "test", "queue": spec.name})

    running = consuming(servers.amqp_url, topology, spec, handler, metrics, prefetch=1)
    async with running as (consumer, channel):
        await declare_exchanges(channel, topology)
        publisher = Publisher(channel)
        for n in range(4):
            await publisher.publish(topology.events, Envelope.new("gauged.thing", {"n": n}))
        await asyncio.wait_for(taken.wait(), 10)
        await asyncio.sleep(1.2)
        await consumer.measure()
        # One held (prefetch 1), three waiting; the one held has been in the queue a while.
        assert gauge("queue_messages") == 3
        age = gauge("queue_oldest_message_age_seconds")
        assert age is not None
        assert age >= 1.0
        release.set()

        async def all_handled() -> bool:
            await consumer.measure()
            return gauge("queue_messages") == 0 and not consumer._in_flight

        deadline = asyncio.get_running_loop().time() + 10
        while not await all_handled():
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)
        assert gauge("queue_oldest_message_age_seconds") == 0

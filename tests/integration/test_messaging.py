"""The consumer's ack policy against the real RabbitMQ."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from darkroom_kit.messaging import (
    Consumer,
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

from tests.conftest import QueueJanitor, Servers


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

    connection = await aio_pika.connect_robust(servers.amqp_url)
    try:
        consumer = Consumer(
            connection,
            topology,
            spec,
            handler,
            ConsumerMetrics(CollectorRegistry(), "test"),
            prefetch=10,
        )
        await consumer.start()
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
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
    finally:
        await connection.close()


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

    connection = await aio_pika.connect_robust(servers.amqp_url)
    try:
        consumer = Consumer(
            connection, topology, spec, handler, ConsumerMetrics(CollectorRegistry(), "test")
        )
        await consumer.start()
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        message = Envelope.new("slow.job", {})
        await Publisher(channel).publish(topology.events, message)
        await asyncio.wait_for(started.wait(), 5)
        await consumer.stop(5)
        assert finished == [message.id]
        assert await _count(channel, spec.name) == 0  # acked, not left behind
    finally:
        await connection.close()

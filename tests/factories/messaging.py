"""The broker as a test sees it: read a queue, consume with the kit's Consumer, publish straight
to an exchange; and polling until something has happened."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
from darkroom_kit import records
from darkroom_kit.messaging import (
    Consumer,
    Envelope,
    Handler,
    Publisher,
    QueueSpec,
    Topology,
    Typed,
)
from darkroom_kit.metrics import ConsumerMetrics


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 15, interval: float = 0.1
) -> Any:
    """Poll until check() returns something truthy; fail with the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value = None
    while loop.time() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")


async def drain(amqp_url: str, queue_name: str, expect: int, timeout: float = 10) -> list[Any]:
    """Read ``expect`` messages from a queue (or what arrived before the timeout)."""
    got: list[Any] = []
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name)
        deadline = asyncio.get_running_loop().time() + timeout
        while len(got) < expect and asyncio.get_running_loop().time() < deadline:
            message = await queue.get(fail=False)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            await message.ack()
            got.append(json.loads(message.body))
    finally:
        await connection.close()
    return got


async def uploaded_ids(amqp_url: str, queue_name: str, expect: int) -> list[str]:
    """The photo ids announced in photo.uploaded (waits a little for more than expected)."""
    messages = await drain(amqp_url, queue_name, expect + 1, 2)
    return [m["data"]["photo"]["id"] for m in messages if m["type"] == records.PHOTO_UPLOADED]


@asynccontextmanager
async def consuming(
    amqp_url: str,
    topology: Topology,
    spec: QueueSpec,
    handler: Handler | Typed,
    metrics: ConsumerMetrics,
    **options: Any,
) -> AsyncIterator[tuple[Consumer, aio_pika.abc.AbstractChannel]]:
    """A started consumer of ``spec`` and a publishing channel (confirms, unroutable an error)
    on its connection, which is closed on the way out."""
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        consumer = Consumer(connection, topology, spec, handler, metrics, **options)
        await consumer.start()
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        yield consumer, channel
    finally:
        await connection.close()


async def publish(amqp_url: str, exchange: str, *envelopes: Envelope) -> None:
    """Straight to the broker, each confirmed (and an unroutable one an error)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await Publisher(channel).publish_many(exchange, envelopes)
    finally:
        await connection.close()

"""Webhook delivery through the whole path: a photo.uploaded fact on the events exchange (as the
API's outbox publishes it) -> RabbitMQ -> webhook-dispatch (its own process) -> a receiver (its
own process, answering 200 at once) -> the attempt logged in MongoDB.

1. Throughput: a backlog of N events (one delivery each, over 10 endpoints) drained by the
   dispatcher: deliveries per second until the last attempt is logged, dispatcher CPU per delivery.
2. Latency at a steady 200 events/s: event-to-receiver p50 / p99, dispatcher CPU per delivery.
3. The same with 1 of the 10 endpoints hanging past the timeout: the other nine's latency.

Side by side in the same run, the baseline: the bare sender, signed POSTs straight from one
process to the same receiver with the same client and concurrency (no broker, no database).

    python -m benchmarks.webhooks [--backlog 10000] [--seconds 20] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import aiohttp
from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.messaging import (
    Envelope,
    Publisher,
    Topology,
    declare_consumer_queue,
    delete_queues,
)
from darkroom_kit.mongo import Database, open_mongo
from darkroom_webhooks.app import fanout_spec, queue_specs
from darkroom_webhooks.settings import WebhookSettings
from darkroom_webhooks.signing import signature_header

from benchmarks.harness import StatusLine, cpu_seconds, percentile, stack_under_test, status_mb
from darkroom_dev.servers import free_port, port_open, wait_until
from darkroom_dev.stack import SERVICES, start_services

ENDPOINTS = 10
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def event_of(i: int) -> str:
    return f"ev_bench{i % ENDPOINTS}"


async def add_endpoints(db: Database, receiver: str) -> None:
    await db[records.WEBHOOK_ENDPOINTS].insert_many(
        [
            {
                "_id": f"wh_bench{k}",
                "url": f"{receiver}/hook/{k}",
                "event_types": ["photo.uploaded"],
                "event_ids": [event_of(k)],
                "enabled": True,
                "failing_since_ms": None,
                "created_ms": now_ms(),
                "secrets": [{"secret": SECRET, "created_ms": now_ms(), "expires_ms": None}],
            }
            for k in range(ENDPOINTS)
        ]
    )


def photo_event(i: int) -> Envelope:
    return Envelope.new(
        records.PHOTO_UPLOADED,
        {"photo": {"id": f"ph_bench{i}", "event_id": event_of(i), "filename": f"img-{i}.jpg"}},
    )


async def receiver_stats(http: aiohttp.ClientSession, receiver: str) -> dict[str, Any]:
    async with http.get(f"{receiver}/stats") as resp:
        stats: dict[str, Any] = await resp.json()
        return stats


async def logged(db: Database) -> int:
    return await db[records.WEBHOOK_DELIVERIES].count_documents({"status": "succeeded"})


async def bare_sender(receiver: str, count: int, concurrency: int) -> tuple[float, float]:
    """Deliveries per second and CPU-ms per delivery of one process that only signs and POSTs."""
    body = json.dumps({"type": "photo.uploaded", "timestamp": "", "data": {}}).encode()
    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=512, limit_per_host=32)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as http:

        async def one(i: int) -> None:
            async with limit:
                stamp = int(time.time())
                headers = {
                    "content-type": "application/json",
                    "webhook-id": f"msg_bare{i}",
                    "webhook-timestamp": str(stamp),
                    "webhook-signature": signature_header([SECRET], f"msg_bare{i}", stamp, body),
                }
                payload = body.replace(b'""', f'"{Envelope.new("x", {}).time}"'.encode(), 1)
                async with http.post(
                    f"{receiver}/hook/bare", data=payload, headers=headers, allow_redirects=False
                ) as resp:
                    await resp.read()

        cpu_before = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        wall = time.perf_counter() - started
        return count / wall, (time.process_time() - cpu_before) / count * 1000


async def bare_consumer(connection: Any, topology: Topology, count: int) -> tuple[float, float]:
    """Messages per second and CPU-ms per message of one process that only consumes and acks
    (aio-pika, prefetch 256, as the dispatcher): the broker's share of the floor."""
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    queue = await channel.declare_queue(f"{topology.namespace}.bench.bare", auto_delete=True)
    publisher = Publisher(channel)
    for first in range(0, count, 500):
        await asyncio.gather(
            *(
                publisher.publish("", photo_event(i), routing_key=queue.name)
                for i in range(first, min(count, first + 500))
            )
        )
    await channel.set_qos(prefetch_count=256)
    done = asyncio.Event()
    seen = 0

    async def on_message(message: Any) -> None:
        nonlocal seen
        Envelope.model_validate_json(message.body)
        await message.ack()
        seen += 1
        if seen >= count:
            done.set()

    cpu_before, started = time.process_time(), time.perf_counter()
    tag = await queue.consume(on_message)
    await done.wait()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    await queue.cancel(tag)
    await channel.close()
    return count / wall, cpu / count * 1000


async def steady(
    publisher: Publisher, topology: Topology, rate: int, seconds: float, first: int
) -> int:
    """Publish ``rate`` events a second for ``seconds``, in ticks of 50 ms."""
    per_tick = max(1, rate // 20)
    ticks = int(seconds * 20)
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    for tick in range(ticks):
        batch = [photo_event(first + sent + j) for j in range(per_tick)]
        await publisher.publish_many(topology.events, batch)
        sent += per_tick
        await asyncio.sleep(max(0, start + (tick + 1) / 20 - loop.time()))
    return sent


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=int, default=200)
    args = parser.parse_args()
    rport = free_port()
    receiver = f"http://127.0.0.1:{rport}"
    rproc = await asyncio.to_thread(
        subprocess.Popen, [sys.executable, "-m", "benchmarks.webhook_receiver", str(rport)]
    )
    wait_until(lambda: port_open("127.0.0.1", rport), 30, "receiver")
    extra = {"ALLOW_PRIVATE_NETWORKS": '["127.0.0.0/8"]', "LOG_LEVEL": "WARNING"}
    figures: dict[str, Any] = {}
    try:
        async with (
            stack_under_test(extra) as stack,
            aiohttp.ClientSession() as http,
        ):
            settings = stack.settings
            topology = Topology(settings.amqp_namespace)
            mongo = open_mongo(settings)
            db = mongo[settings.mongo_db]
            channel = await stack.connection.channel(publisher_confirms=True, on_return_raises=True)
            publisher = Publisher(channel)
            try:
                await add_endpoints(db, receiver)
                print(f"baseline: bare sender, {args.backlog} signed POSTs ...", flush=True)
                figures["bare_before"] = await bare_sender(receiver, args.backlog // 2, 64)
                figures["consume"] = await bare_consumer(
                    stack.connection, topology, args.backlog // 2
                )

                # 1. A backlog, queued before the dispatcher starts.
                await declare_consumer_queue(channel, topology, fanout_spec(topology), 20)
                print(f"queueing {args.backlog} events ...", flush=True)
                for first in range(0, args.backlog, 1000):
                    await publisher.publish_many(
                        topology.events,
                        [photo_event(i) for i in range(first, min(args.backlog, first + 1000))],
                    )
                await http.post(f"{receiver}/reset")
                [service] = await asyncio.to_thread(
                    start_services,
                    stack.env,
                    stack.logs,
                    free_port(len(SERVICES)),
                    ["webhook-dispatch"],
                )
                assert service.process is not None
                pid = service.process.pid
                try:
                    while True:  # the clock starts with the first delivery
                        if (await receiver_stats(http, receiver))["unique"]:
                            break
                        await asyncio.sleep(0.01)
                    started, cpu0 = time.perf_counter(), sum(cpu_seconds(pid))
                    # The receiver is asked (cheap); MongoDB only once it has them all: a count
                    # over the log would stall the stand-in while it drains.
                    status = StatusLine()
                    while True:
                        done = (await receiver_stats(http, receiver))["unique"]
                        rate = done / (time.perf_counter() - started)
                        status.show(f"  received {done:6}/{args.backlog}, {rate:6.0f}/s")
                        if done >= args.backlog:
                            break
                        await asyncio.sleep(0.1)
                    received = time.perf_counter() - started
                    while True:
                        if await logged(db) >= args.backlog:
                            break
                        await asyncio.sleep(0.1)
                    wall = time.perf_counter() - started
                    cpu = sum(cpu_seconds(pid)) - cpu0
                    status.end()
                    figures["drain"] = (
                        args.backlog / wall,
                        cpu / args.backlog * 1000,
                        args.backlog / received,
                    )

                    # 2. and 3. Steady load, then the same with one endpoint hanging.
                    sent = args.backlog
                    for phase, hanging in (("steady", False), ("hanging", True)):
                        if hanging:
                            await db[records.WEBHOOK_ENDPOINTS].update_one(
                                {"_id": "wh_bench0"}, {"$set": {"url": f"{receiver}/hang"}}
                            )
                        await http.post(f"{receiver}/reset")
                        before = await logged(db)
                        cpu0 = sum(cpu_seconds(pid))
                        print(f"{phase}: {args.rate} events/s for {args.seconds:g} s ...")
                        count = await steady(publisher, topology, args.rate, args.seconds, sent)
                        sent += count
                        expect = count - (count // ENDPOINTS if hanging else 0)
                        deadline = time.perf_counter() + 30
                        while time.perf_counter() < deadline:
                            stats = await receiver_stats(http, receiver)
                            if stats["unique"] >= expect:
                                break
                            await asyncio.sleep(0.2)
                        cpu = sum(cpu_seconds(pid)) - cpu0
                        delivered = await logged(db) - before
                        lat = [v for ls in stats["latencies_ms"].values() for v in ls]
                        figures[phase] = (
                            stats["unique"],
                            expect,
                            percentile(lat, 50),
                            percentile(lat, 99),
                            max(lat) if lat else float("nan"),
                            cpu / max(1, delivered) * 1000,
                        )
                    figures["rss"] = status_mb(pid, "VmHWM")
                finally:
                    service.process.kill()
                    service.process.wait(30)
                print("baseline again ...", flush=True)
                figures["bare_after"] = await bare_sender(receiver, args.backlog // 2, 64)
            finally:
                await mongo.drop_database(settings.mongo_db)
                await mongo.close()
                specs = queue_specs(topology, WebhookSettings(amqp_namespace=topology.namespace))
                for spec in specs:
                    await delete_queues(stack.connection, list(reversed(spec.all_queue_names())))
    finally:
        rproc.kill()  # a graceful stop would wait for the hanging requests
        rproc.wait(10)

    bare = [(figures["bare_before"][i] + figures["bare_after"][i]) / 2 for i in (0, 1)]
    drain_rate, drain_cpu, received_rate = figures["drain"]
    print()
    print("| figure | measured | target |")
    print("|---|---|---|")
    print(
        f"| backlog of {args.backlog}: deliveries/s, received and logged | {drain_rate:.0f} "
        "| at least 1,000 |"
    )
    print(f"| backlog: deliveries/s, received only | {received_rate:.0f} | |")
    print(f"| backlog: dispatcher CPU-ms per delivery | {drain_cpu:.2f} | at most 1 |")
    print(
        f"| baseline, bare signed POSTs from one process: per second / CPU-ms each | "
        f"{bare[0]:.0f} / {bare[1]:.2f} | |"
    )
    print(
        "| baseline, bare consume + ack (aio-pika, prefetch 256): per second / CPU-ms each | "
        f"{figures['consume'][0]:.0f} / {figures['consume'][1]:.2f} | |"
    )
    print(
        f"| floor, bare POST + bare consume: CPU-ms per delivery | "
        f"{bare[1] + figures['consume'][1]:.2f} | |"
    )
    print(f"| drain / bare sender | {drain_rate / bare[0]:.2f} | |")
    for phase, label in (("steady", "all 10 answer"), ("hanging", "1 of 10 hangs, the other 9")):
        got, expect, p50, p99, worst, cpu = figures[phase]
        print(
            f"| {args.rate} events/s, {label}: received | {got} of {expect} | all |",
        )
        print(
            f"| {args.rate} events/s, {label}: latency p50 / p99 / max ms | "
            f"{p50:.1f} / {p99:.1f} / {worst:.0f} | p99 under 100 |"
        )
        print(f"| {args.rate} events/s, {label}: dispatcher CPU-ms per delivery | {cpu:.2f} | |")
    print(f"| dispatcher peak RSS | {figures['rss']:.0f} MB | |")


if __name__ == "__main__":
    asyncio.run(main())

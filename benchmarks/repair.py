"""Metadata repair: photos repaired per second over 10,000 photos with cleared dimensions, through
the whole service (scan, claim, ranged GET of each head, header parse in the process pool, bulk
write, one photo.repaired each), next to a bare loop that only does the ranged GETs and header
parses on the same objects, in the same run.

    python -m benchmarks.repair [--photos 10000] [--bare 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.ids import new_id
from darkroom_kit.messaging import Envelope, Publisher, Topology
from darkroom_kit.mongo import open_mongo
from darkroom_kit.pool import RenderPool
from darkroom_kit.storage import S3ObjectStore, open_object_store
from darkroom_repair.repair import header_facts

from benchmarks.harness import (
    StatusLine,
    cpu_seconds,
    machine_cpu,
    percentile,
    stack_under_test,
)
from benchmarks.thumbnailing import camera_like_jpeg
from darkroom_dev.servers import free_port
from darkroom_dev.stack import SERVICES, start_services

HEAD = 256 * 1024


async def bare_loop(store: S3ObjectStore, keys: list[str], count: int) -> float:
    """Photos per second for just the ranged GET and the header parse, 16 at a time."""
    pool = RenderPool(2)
    limit = asyncio.Semaphore(16)

    async def one(key: str) -> None:
        async with limit:
            head = await store.get_bytes(key, 0, HEAD - 1)
            await pool.run(20, header_facts, head, 50_000_000)

    try:
        await pool.run(20, header_facts, await store.get_bytes(keys[0], 0, HEAD - 1), 50_000_000)
        started = time.perf_counter()
        await asyncio.gather(*(one(keys[i % len(keys)]) for i in range(count)))
        return count / (time.perf_counter() - started)
    finally:
        await pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=10_000)
    parser.add_argument("--bare", type=int, default=2_000)
    args = parser.parse_args()
    async with stack_under_test() as stack:
        settings = stack.settings
        mongo = open_mongo(settings)
        db = mongo[settings.mongo_db]
        try:
            async with open_object_store(settings) as store:
                await store.ensure_bucket()
                keys = []
                for i in range(8):
                    keys.append(f"bench/originals/{i}.jpg")
                    await store.put_bytes(keys[-1], camera_like_jpeg(i, 3000, 2000), "image/jpeg")
                print(f"bare loop: {args.bare} ranged GETs + header parses ...", flush=True)
                bare_before = await bare_loop(store, keys, args.bare)
            print(f"inserting {args.photos} photos with cleared dimensions ...", flush=True)
            docs = [
                {
                    "_id": new_id("ph"),
                    "event_id": "ev_bench",
                    "event_slug": "bench",
                    "filename": f"img-{i:05d}.jpg",
                    "content_type": "image/jpeg",
                    "kind": "image",
                    "size": 1,
                    "sha256": "0" * 64,
                    "original_key": keys[i % len(keys)],
                    "status": "processed",
                    "width": None,
                    "height": None,
                    "captured_at_ms": None,
                    "variants": {},
                    "created_ms": 0,
                }
                for i in range(args.photos)
            ]
            for first in range(0, len(docs), 1000):
                await db[records.PHOTOS].insert_many(docs[first : first + 1000])
            op_id = new_id("op")
            await db[records.OPERATIONS].insert_one(
                {
                    "_id": op_id,
                    "kind": "repair_dimensions",
                    "state": "queued",
                    "created_ms": now_ms(),
                    "progress": {"scanned": 0, "repaired": 0, "failed": 0},
                }
            )
            port = free_port(len(SERVICES))
            [service] = await asyncio.to_thread(
                start_services, stack.env, stack.logs, port, ["metadata-repair"]
            )
            assert service.process is not None
            pid = service.process.pid
            try:
                publisher = Publisher(
                    await stack.connection.channel(publisher_confirms=True, on_return_raises=True)
                )
                cpu_before, (busy_before, _) = sum(cpu_seconds(pid)), machine_cpu()
                started = time.perf_counter()
                await publisher.publish(
                    Topology(settings.amqp_namespace).commands,
                    Envelope.new(
                        records.REPAIR_REQUESTED, {"operation_id": op_id, "event_id": None}
                    ),
                )
                gaps, last, last_count = [], started, 0
                status = StatusLine()
                while True:
                    await asyncio.sleep(0.5)
                    op = await db[records.OPERATIONS].find_one({"_id": op_id})
                    assert op is not None
                    count = op["progress"]["repaired"]
                    now = time.perf_counter()
                    if count > last_count:
                        gaps.append((count - last_count) / (now - last))
                        last, last_count = now, count
                    status.show(
                        f"  service  {count:6}/{args.photos} repaired, "
                        f"{count / (now - started):6.0f}/s"
                    )
                    if op["state"] in ("done", "failed"):
                        break
                wall = time.perf_counter() - started
                status.end()
                # The pool's processes are children; count the whole machine as well.
                service_cpu = sum(cpu_seconds(pid)) - cpu_before
                busy = machine_cpu()[0] - busy_before
            finally:
                service.process.terminate()
                service.process.wait(30)
            async with open_object_store(settings) as store:
                bare_after = await bare_loop(store, keys, args.bare)
            repaired = await db[records.PHOTOS].count_documents({"width": {"$ne": None}})
        finally:
            await mongo.drop_database(settings.mongo_db)
            await mongo.close()
    rate = op["result"]["repaired"] / wall
    bare = (bare_before + bare_after) / 2
    print()
    print("| figure | measured | target |")
    print("|---|---|---|")
    print(f"| operation | {op['state']}, {op['result']} | done |")
    print(f"| photos with dimensions afterwards | {repaired} of {args.photos} | all |")
    print(f"| service: photos repaired per second | {rate:.0f} | at least 300 |")
    print(
        f"| service: rate over each 0.5 s, p10 / p50 | {percentile(gaps, 10):.0f} / "
        f"{percentile(gaps, 50):.0f} | |"
    )
    print(
        f"| bare loop (ranged GET + parse only) per second | {bare:.0f} "
        f"({bare_before:.0f} before, {bare_after:.0f} after) | |"
    )
    print(f"| service / bare | {rate / bare:.2f} | |")
    print(
        f"| CPU-ms per photo: service event loop / whole machine | "
        f"{service_cpu / args.photos * 1000:.2f} / {busy / args.photos * 1000:.2f} | |"
    )


if __name__ == "__main__":
    asyncio.run(main())

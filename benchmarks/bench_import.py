"""S3 prefix import: photos per second and upload-ingest CPU-ms per photo for an import of 1,000
objects of about 1 MB, next to a bare loop that makes the same server-side copies (CopyObject of
the same objects, as many at once) with the same S3 client, in the same run.

The import does per object what the bare loop does (one CopyObject) plus what makes it an upload:
a ranged GET of the head (the type), a ranged GET of the tail (truncation), the photo records and
their ``photo.uploaded`` (a batch write, published with confirms), and the progress written to
the Operation after each batch. Target: at least 0.8 of the bare loop's rate.

The objects are distinct (random bytes between JPEG markers) and their sizes differ by a few
bytes, as real photos' do: a file with the size of a photo already in the event is read back
whole to compare digests (the duplicate rule), which distinct sizes spare.

    python -m benchmarks.bench_import [--objects 1000] [--size 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import time
from datetime import datetime

import aiohttp
from darkroom_kit.storage import S3ObjectStore, open_bucket, open_object_store

from benchmarks.harness import StatusLine, api_under_test, cpu_seconds

CONCURRENCY = 8  # the import's IMPORT_CONCURRENCY, and the bare loop's copies at once
PREFIX = "shoot/"


def jpeg_like(size: int) -> bytes:
    """``size`` bytes that sniff as a JPEG and end as one, none like another."""
    return b"\xff\xd8\xff\xe0" + os.urandom(size - 6) + b"\xff\xd9"


async def fill(store: S3ObjectStore, count: int, size: int) -> list[tuple[str, int]]:
    limit = asyncio.Semaphore(16)
    objects = [(f"{PREFIX}{i:05d}.jpg", size + i) for i in range(count)]

    async def one(key: str, n: int) -> None:
        async with limit:
            await store.put_bytes(key, jpeg_like(n), "image/jpeg")

    await asyncio.gather(*(one(k, n) for k, n in objects))
    return objects


async def bare_loop(
    store: S3ObjectStore,
    source: S3ObjectStore,
    objects: list[tuple[str, int]],
    *,
    reads: bool = False,
) -> float:
    """Copies per second: CopyObject of every object into darkroom's bucket, CONCURRENCY at
    once, with the client the import uses (``S3ObjectStore.copy_from``). With ``reads``, also
    the two ranged GETs an import makes of each object (head before, tail after): the S3 floor
    of an import, without MongoDB, RabbitMQ or the service."""
    limit = asyncio.Semaphore(CONCURRENCY)
    folder = "floor" if reads else "bare"

    async def one(key: str, size: int) -> None:
        async with limit:
            if reads:
                await source.get_bytes(key, 0, 31)
            await store.copy_from(source.bucket, key, f"{folder}/{key}", size, "image/jpeg")
            if reads:
                await store.get_bytes(f"{folder}/{key}", max(0, size - 65536))

    started = time.perf_counter()
    await asyncio.gather(*(one(k, n) for k, n in objects))
    return len(objects) / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1_000_000)
    args = parser.parse_args()
    drop = f"bench-drop-{secrets.token_hex(3)}"
    env = {
        "IMPORT_SOURCES": json.dumps({"drop": {"bucket": drop}}),
        "IMPORT_CONCURRENCY": str(CONCURRENCY),
    }
    async with api_under_test(env) as api:
        settings = api.settings
        async with (
            open_bucket(
                settings.s3_endpoint_url,
                drop,
                settings.s3_access_key.get_secret_value(),
                settings.s3_secret_key.get_secret_value(),
                settings.s3_region,
            ) as source,
            open_object_store(settings) as store,
        ):
            await source.ensure_bucket()
            print(f"filling {drop}: {args.objects} objects of ~{args.size} bytes ...", flush=True)
            objects = await fill(source, args.objects, args.size)
            print(f"bare loop: {args.objects} CopyObject, {CONCURRENCY} at once ...", flush=True)
            bare = await bare_loop(store, source, objects)
            print("S3 floor: the same, with the head and tail GETs of an import ...", flush=True)
            floor = await bare_loop(store, source, objects, reads=True)
            await store.delete_many([f"{d}/{k}" for k, _ in objects for d in ("bare", "floor")])

        print(f"import: {args.objects} objects through upload-ingest ...", flush=True)
        cpu_before = sum(cpu_seconds(api.pid))
        started = time.perf_counter()
        async with aiohttp.ClientSession(headers=api.headers) as http:
            async with http.post(
                f"{api.url}/v1/events/{api.event_id}/imports",
                json={"source": "drop", "prefix": PREFIX},
            ) as resp:
                assert resp.status == 202, await resp.text()
                op_id = (await resp.json())["id"]
            status = StatusLine()
            while True:
                async with http.get(f"{api.url}/v1/operations/{op_id}") as resp:
                    op = await resp.json()
                done = op["progress"]["imported"]
                elapsed = time.perf_counter() - started
                status.show(f"  import  {done:5}/{args.objects} imported, {done / elapsed:6.1f}/s")
                if op["state"] in ("done", "failed"):
                    break
                await asyncio.sleep(0.2)
            status.end()
        cpu = sum(cpu_seconds(api.pid)) - cpu_before
        # The Operation's own times: from its creation to its end, not to this loop's next poll.
        elapsed = (_at(op["updated_at"]) - _at(op["created_at"])).total_seconds()
        imported = op["progress"]["imported"]
        if op["state"] != "done" or imported != args.objects:
            raise SystemExit(f"the import did not import every object: {op}")
        rate = imported / elapsed
        print()
        largest = args.size + args.objects - 1
        print(f"objects              {args.objects} of {args.size}..{largest} B")
        print(f"bare CopyObject loop {bare:8.1f} copies/s")
        share = floor / bare
        print(f"S3 floor (GET+copy+GET) {floor:5.1f} objects/s ({share:.2f} of the bare loop)")
        print(f"import               {rate:8.1f} photos/s  ({elapsed:.1f} s)")
        print(f"upload-ingest CPU    {cpu * 1000 / imported:8.2f} ms/photo ({cpu:.1f} s in all)")
        print(f"ratio                {rate / bare:8.2f}  (target >= 0.80)")
        print(f"ratio to the S3 floor {rate / floor:7.2f}")


def _at(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


if __name__ == "__main__":
    asyncio.run(main())

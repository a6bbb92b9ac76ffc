"""Direct-to-S3 upload benchmark: the API signs, S3 takes the bytes.

Uploads one file as a presigned S3 multipart upload (8 MiB parts, 4 at a time) through
darkroom's direct-upload API (ticket, one signed URL per part, completion), with a client that
holds no credentials and PUTs to the URLs it was given; and, in the same run, the same parts to
the same S3 server with URLs presigned outside the API (the floor: no API at all).

Prints: the API's CPU-seconds per GiB (target at most 0.05: signing and completion only) over
the whole upload (ticket to photo, 10 ms ticks) and summed over its requests only (ticket,
signing, completion, read to the nanosecond from the threads' schedstat: not the seconds the
client's PUTs go to S3 with the API idle), and the throughput of each, with their ratio (target
at least 0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import aiohttp
from darkroom_kit.storage import MIB, StoredPart, open_object_store

from benchmarks.chunked_upload import Chunks
from benchmarks.harness import (
    GIB,
    ApiUnderTest,
    Progress,
    api_under_test,
    cpu_seconds,
    status_mb,
    threads_cpu_seconds,
)

PART = 8 * MIB
PARALLEL = 4


async def _put(s3: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes) -> str:
    async with s3.put(url, data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["ETag"].strip('"')


async def floor(api: ApiUnderTest, chunks: Chunks) -> float:
    """The same parts PUT to URLs presigned here, with no API in between."""
    progress = Progress("floor", chunks.size)
    key = f"bench-direct-floor/{chunks.size}"
    async with open_object_store(api.settings) as store, aiohttp.ClientSession() as s3:
        started = time.perf_counter()
        upload_id = await store.create_multipart(key, "video/mp4")
        limit = asyncio.Semaphore(PARALLEL)

        async def one(i: int) -> StoredPart:
            async with limit:
                signed = store.presigned_part(key, upload_id, i + 1, 900)
                etag = await _put(s3, signed.url, signed.headers, chunks[i])
                size = min(PART, chunks.size - i * PART)
                progress.add(size)
                return StoredPart(i + 1, etag, size)

        parts = await asyncio.gather(*(one(i) for i in range(chunks.count)))
        await store.complete_multipart(key, upload_id, list(parts))
        elapsed = time.perf_counter() - started
        await store.delete_many([key])
    progress.end()
    return elapsed


async def through_api(api: ApiUnderTest, chunks: Chunks, name: str) -> tuple[float, float, float]:
    """Elapsed seconds and the API's CPU-seconds for one direct multipart upload: over the
    whole upload, and in its requests only."""
    in_requests = 0.0
    progress = Progress("direct", chunks.size)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with (
        aiohttp.ClientSession(api.url, headers=api.headers, timeout=timeout) as http,
        aiohttp.ClientSession(timeout=timeout) as s3,
    ):
        user0, sys0 = cpu_seconds(api.pid)
        started = time.perf_counter()
        before = threads_cpu_seconds(api.pid)
        resp = await http.post(
            f"/v1/events/{api.event_id}/direct-uploads",
            json={
                "filename": name,
                "size": chunks.size,
                "mime_type": "video/mp4",
                "multipart": True,
            },
        )
        ticket = await resp.json()
        assert resp.status == 201, ticket
        upload_id = ticket["upload_id"]
        in_requests += threads_cpu_seconds(api.pid) - before
        # Every part's URL in one request per 1,000 parts, as a client that knows its parts
        # up front does (one signing request per part costs the API a request each).
        urls: list[dict[str, Any]] = []
        before = threads_cpu_seconds(api.pid)
        for first in range(1, chunks.count + 1, 1000):
            numbers = list(range(first, min(first + 1000, chunks.count + 1)))
            signed = await http.post(
                f"/v1/direct-uploads/{upload_id}/part-urls", json={"part_numbers": numbers}
            )
            answer = await signed.json()
            assert signed.status == 200, answer
            urls.extend(answer["parts"])
        in_requests += threads_cpu_seconds(api.pid) - before
        limit = asyncio.Semaphore(PARALLEL)

        async def one(i: int) -> dict[str, object]:
            async with limit:
                part = urls[i]
                etag = await _put(s3, part["url"], part["headers"], chunks[i])
                progress.add(min(PART, chunks.size - i * PART))
                return {"PartNumber": i + 1, "ETag": f'"{etag}"'}

        parts = await asyncio.gather(*(one(i) for i in range(chunks.count)))
        before = threads_cpu_seconds(api.pid)
        done = await http.post(f"/v1/direct-uploads/{upload_id}/complete", json={"parts": parts})
        photo = await done.json()
        assert done.status == 200, photo
        elapsed = time.perf_counter() - started
        in_requests += threads_cpu_seconds(api.pid) - before
        user1, sys1 = cpu_seconds(api.pid)
        await http.delete(f"/v1/photos/{photo['id']}")
    progress.end()
    return elapsed, (user1 - user0) + (sys1 - sys0), in_requests


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", default="1024")
    args = parser.parse_args()
    sizes = [int(s) * MIB for s in args.sizes_mib.split(",")]
    async with api_under_test({"UPLOAD_CHUNK_BYTES": str(PART)}) as api:
        print(f"parts of {PART // MIB} MiB, {PARALLEL} in parallel; API pid {api.pid}")
        await through_api(api, Chunks(64 * MIB), "warm-up.mp4")
        rows = []
        for size in sizes:
            chunks = Chunks(size)
            base = await floor(api, chunks)
            elapsed, cpu, in_requests = await through_api(api, chunks, f"direct-{size}.mp4")
            gib = size / GIB
            rows.append(
                (size, size / base / 1e6, size / elapsed / 1e6, cpu / gib, in_requests / gib)
            )
        print()
        print(
            "file      floor MB/s   direct MB/s   ratio   API CPU-s/GiB: upload / its requests"
            "   API peak RSS"
        )
        for size, base_mbs, api_mbs, cpu_gib, requests_gib in rows:
            print(
                f"{size // MIB:5d} MiB {base_mbs:10.1f} {api_mbs:13.1f} {api_mbs / base_mbs:7.2f}"
                f" {cpu_gib:22.3f} / {requests_gib:.3f} {status_mb(api.pid, 'VmHWM'):12.0f} MB"
            )
        print("targets: ratio >= 0.95, API CPU <= 0.05 s/GiB (signing and completion only)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

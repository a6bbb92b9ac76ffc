"""Chunked upload benchmark (issue 3's figures).

Uploads one file in 8 MiB chunks, 4 at a time, through the upload-ingest API (its own process), and
in the same run sends the same parts straight to the same S3 server with the same client code
(``S3ObjectStore.upload_part``, 4 at a time), and through a bare forwarder
(``benchmarks/bare_chunk_server.py``, its own process: receive the chunk, forward it as the part,
nothing else). Runs 512 MiB, then 2 GiB, so the API's peak RSS can be seen not to grow with the
file.

Prints: API CPU-seconds per GiB next to the bare forwarder's, API peak RSS after each size,
throughputs and their ratio.
Targets: <= 1.5 CPU-s/GiB, peak RSS < 150 MB and independent of the file size, ratio >= 0.85.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import aiohttp
from darkroom_kit.storage import MIB, StoredPart, open_object_store

from benchmarks.harness import GIB, ApiUnderTest, Progress, api_under_test, cpu_seconds, status_mb
from darkroom_dev.servers import free_port, port_open, wait_until

CHUNK = 8 * MIB
PARALLEL = 4


class Chunks:
    """Chunk i of a file of random bytes, made on demand (the file is never held whole)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.count = -(-size // CHUNK)
        self._base = bytearray(os.urandom(CHUNK))
        self._base[:12] = b"\0\0\0\x18ftypmp42"  # sniffed as MP4: a big file is a video

    def __getitem__(self, i: int) -> bytes:
        n = min(CHUNK, self.size - i * CHUNK)
        data = bytearray(self._base[:n])
        data[16:24] = i.to_bytes(8, "big")
        return bytes(data)


async def direct(api: ApiUnderTest, chunks: Chunks) -> float:
    progress = Progress("baseline", chunks.size)
    async with open_object_store(api.settings) as store:
        started = time.perf_counter()
        key = f"bench-direct/{chunks.size}"
        upload_id = await store.create_multipart(key, "video/mp4")
        limit = asyncio.Semaphore(PARALLEL)

        async def one(i: int) -> StoredPart:
            async with limit:
                part = await store.upload_part(key, upload_id, i + 1, chunks[i])
                progress.add(part.size)
                return part

        parts = await asyncio.gather(*(one(i) for i in range(chunks.count)))
        await store.complete_multipart(key, upload_id, list(parts))
        elapsed = time.perf_counter() - started
        await store.delete_many([key])
    progress.end()
    return elapsed


async def bare_forwarder(api: ApiUnderTest, chunks: Chunks) -> float:
    """CPU-seconds of the bare forwarder for the same chunks."""
    port, key = free_port(), f"bench-bare/{chunks.size}"
    env = {
        **os.environ,
        "S3_ENDPOINT_URL": api.settings.s3_endpoint_url or "",
        "S3_BUCKET": api.settings.s3_bucket,
    }
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.bare_chunk_server", str(port), key, env=env
    )
    progress = Progress("bare", chunks.size)
    try:
        await asyncio.to_thread(wait_until, lambda: port_open("127.0.0.1", port), 30, "forwarder")
        async with (
            open_object_store(api.settings) as store,
            aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http,
        ):
            user0, sys0 = cpu_seconds(server.pid)
            upload_id = await store.create_multipart(key, "video/mp4")
            limit = asyncio.Semaphore(PARALLEL)

            async def one(i: int) -> StoredPart:
                async with limit:
                    r = await http.put(f"/{upload_id}/{i + 1}", data=chunks[i])
                    assert r.status == 200, await r.text()
                    part = await r.json()
                    progress.add(part["size"])
                    return StoredPart(i + 1, part["etag"], part["size"])

            parts = await asyncio.gather(*(one(i) for i in range(chunks.count)))
            await store.complete_multipart(key, upload_id, list(parts))
            user1, sys1 = cpu_seconds(server.pid)
            await store.delete_many([key])
    finally:
        server.terminate()
        await server.wait()
    progress.end()
    return (user1 - user0) + (sys1 - sys0)


async def through_api(api: ApiUnderTest, chunks: Chunks, name: str) -> tuple[float, float, float]:
    progress = Progress("API", chunks.size)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(api.url, headers=api.headers, timeout=timeout) as http:
        user0, sys0 = cpu_seconds(api.pid)
        started = time.perf_counter()
        resp = await http.post(
            f"/v1/events/{api.event_id}/uploads",
            json={"filename": name, "size": chunks.size, "mime_type": "video/mp4"},
        )
        upload = await resp.json()
        assert resp.status == 201, upload
        assert upload["chunk_size"] == CHUNK
        limit = asyncio.Semaphore(PARALLEL)

        async def one(i: int) -> None:
            async with limit:
                r = await http.put(f"/v1/uploads/{upload['upload_id']}/chunks/{i}", data=chunks[i])
                assert r.status == 200, await r.text()
                progress.add(min(CHUNK, chunks.size - i * CHUNK))

        await asyncio.gather(*(one(i) for i in range(chunks.count)))
        done = await http.post(f"/v1/uploads/{upload['upload_id']}/complete")
        photo = await done.json()
        assert done.status == 200, photo
        elapsed = time.perf_counter() - started
        user1, sys1 = cpu_seconds(api.pid)
        await http.delete(f"/v1/photos/{photo['id']}")
    progress.end()
    return elapsed, user1 - user0, sys1 - sys0


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", default="512,2048")
    args = parser.parse_args()
    sizes = [int(s) * MIB for s in args.sizes_mib.split(",")]
    async with api_under_test({"UPLOAD_CHUNK_BYTES": str(CHUNK)}) as api:
        print(f"chunks of {CHUNK // MIB} MiB, {PARALLEL} in parallel; API pid {api.pid}")
        await through_api(api, Chunks(64 * MIB), "warm-up.mp4")
        rows = []
        for size in sizes:
            chunks = Chunks(size)
            base = await direct(api, chunks)
            elapsed, user, system = await through_api(api, chunks, f"big-{size}.mp4")
            bare_cpu = await bare_forwarder(api, chunks)
            gib = size / GIB
            rows.append(
                (
                    size,
                    size / base / 1e6,
                    size / elapsed / 1e6,
                    (user + system) / gib,
                    user / gib,
                    system / gib,
                    bare_cpu / gib,
                    status_mb(api.pid, "VmHWM"),
                )
            )
        print()
        print(
            "file      baseline MB/s   API MB/s   ratio   API CPU-s/GiB (user/sys)"
            "   bare forwarder CPU-s/GiB   API peak RSS"
        )
        for size, base_mbs, api_mbs, cpu, user, system, bare, rss in rows:
            print(
                f"{size // MIB:5d} MiB {base_mbs:13.1f} {api_mbs:10.1f} {api_mbs / base_mbs:7.2f}"
                f" {cpu:9.2f} ({user:.2f}/{system:.2f}) {bare:20.2f} {rss:20.0f} MB"
            )
        print("targets: ratio >= 0.85, <= 1.5 CPU-s/GiB, peak RSS < 150 MB and flat across sizes")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""The S3 data path against aiobotocore, side by side in one process, on the same server.

Each round makes the same calls both ways and reads this process's CPU time around them: ranged
GETs of a 256 KiB head (what metadata-repair does per photo), 8 MiB GETs (thumbnailing's
originals), and 8 MiB UploadParts 4 at a time (chunked uploads). When the script started
moto_server itself it also prints the server's own CPU per call, which is what bounds the
services' figures on the stand-in.

    python -m benchmarks.s3_data_path [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from darkroom_kit.settings import CommonSettings
from darkroom_kit.storage import MIB, PartBody, S3ObjectStore, open_object_store

from benchmarks.harness import cpu_seconds
from darkroom_dev.servers import free_port, start_s3_standin

HEAD = 256 * 1024
PART = 8 * MIB


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def part_body(piece: bytes) -> PartBody:
    """8 MiB as 256 KiB pieces, the way a chunk arrives from a client."""
    body = PartBody()
    for _ in range(PART // len(piece)):
        body.append(piece)
    return body


async def measure(
    calls: int, parallel: int, call: Callable[[int], Awaitable[object]], server_pid: int | None
) -> tuple[float, float | None]:
    """(client CPU-ms per call, server CPU-ms per call or None)."""
    limit = asyncio.Semaphore(parallel)

    async def one(i: int) -> None:
        async with limit:
            await call(i)

    server_before = sum(cpu_seconds(server_pid)) if server_pid else 0.0
    before = own_cpu()
    await asyncio.gather(*(one(i) for i in range(calls)))
    client = (own_cpu() - before) / calls * 1000
    server = (sum(cpu_seconds(server_pid)) - server_before) / calls * 1000 if server_pid else None
    return client, server


def part_calls(
    store: S3ObjectStore, key: str, upload_id: str, piece: bytes
) -> tuple[Callable[[int], Awaitable[object]], Callable[[int], Awaitable[object]]]:
    """UploadPart of part i both ways (different part numbers, so neither replaces the other)."""

    async def boto(i: int) -> object:
        return await store._client.upload_part(
            Bucket=store.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=i + 1,
            Body=part_body(piece),  # type: ignore[arg-type]
        )

    async def data_path(i: int) -> object:
        return await store.upload_part(key, upload_id, 1001 + i, part_body(piece))

    return boto, data_path


async def rounds(store: S3ObjectStore, count: int, server_pid: int | None) -> None:
    client = store._client  # aiobotocore, the way the data path went before S3Http
    bucket = store.bucket
    piece = os.urandom(256 * 1024)
    await store.put_bytes("bench/original", os.urandom(PART), "image/jpeg")

    async def boto_head(_: int) -> object:
        resp = await client.get_object(
            Bucket=bucket, Key="bench/original", Range=f"bytes=0-{HEAD - 1}"
        )
        async with resp["Body"] as body:
            return await body.read()

    async def boto_whole(_: int) -> object:
        resp = await client.get_object(Bucket=bucket, Key="bench/original")
        async with resp["Body"] as body:
            return await body.read()

    async def data_path_head(_: int) -> object:
        return await store.get_bytes("bench/original", 0, HEAD - 1)

    async def data_path_whole(_: int) -> object:
        return await store.get_bytes("bench/original")

    print(f"{'call':22} {'client':12} {'CPU-ms/call':>10} {'server CPU-ms/call':>20}")
    for n in range(count):
        upload_id = await store.create_multipart(f"bench/parts{n}", "video/mp4")

        boto_part, data_path_part = part_calls(store, f"bench/parts{n}", upload_id, piece)
        cases = [
            ("ranged GET 256 KiB", 300, 8, boto_head, data_path_head),
            ("GET 8 MiB", 40, 4, boto_whole, data_path_whole),
            ("UploadPart 8 MiB", 32, 4, boto_part, data_path_part),
        ]
        for label, calls, parallel, boto, ours in cases:
            for name, call in (("aiobotocore", boto), ("S3Http", ours)):
                mine, server = await measure(calls, parallel, call, server_pid)
                served = f"{server:20.2f}" if server is not None else f"{'-':>20}"
                print(f"{label:22} {name:12} {mine:10.2f} {served}")
        await store.abort_multipart(f"bench/parts{n}", upload_id)
        print(f"  (8 MiB parts: CPU-ms per call x 0.128 = CPU-s per GiB; round {n + 1} of {count})")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    url, server = os.environ.get("S3_ENDPOINT_URL"), None
    if url is None:
        server = start_s3_standin(free_port(), Path(tempfile.mkdtemp(prefix="darkroom-s3-")))
        url = server.url
    try:
        settings = CommonSettings(s3_endpoint_url=url, s3_bucket=f"s3path-{secrets.token_hex(3)}")
        async with open_object_store(settings) as store:
            await store.ensure_bucket()
            pid = server.process.pid if server is not None and server.process else None
            await rounds(store, args.rounds, pid)
            await store.delete_many(await store.list_keys("bench/"))
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

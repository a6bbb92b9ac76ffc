"""What the bare stack costs: the floor under the upload path's CPU per GiB.

A plain aiohttp handler receives 1 GiB (sent by a separate client process, whose CPU is not
counted) and, by mode, drops it, forwards it to S3 as 8 MiB multipart parts with the project's
StreamingWriter, or forwards and SHA-256-hashes it. No API, no multipart/form-data parsing, no
MongoDB or RabbitMQ. The difference between these and `batch_upload.py` is what the API itself
costs.

Uses S3_ENDPOINT_URL when set; otherwise starts moto_server.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web
from darkroom_kit.settings import CommonSettings
from darkroom_kit.storage import MIB, S3ObjectStore, open_object_store

from darkroom_dev.servers import free_port, start_s3_standin

GIB = 1 << 30
CLIENT = """
import asyncio, os, sys, aiohttp
async def main(url, total):
    data = os.urandom(1 << 20)
    async def body():
        for _ in range(total >> 20):
            yield data
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        resp = await http.post(url, data=body(), headers={"Content-Length": str(total)})
        assert resp.status == 200, resp.status
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def handler(mode: str, store: S3ObjectStore):  # type: ignore[no-untyped-def]
    async def handle(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        writer = (
            None
            if mode == "receive"
            else store.writer(f"floor/{secrets.token_hex(4)}", "application/octet-stream", 8 * MIB)
        )
        async for chunk in request.content.iter_any():
            if mode == "forward+sha256":
                digest.update(chunk)
            if writer is not None:
                await writer.write(chunk)
        if writer is not None:
            info = await writer.close()
            await store.delete_many([info.key])
        return web.Response(text="ok")

    return handle


async def measure(mode: str, store: S3ObjectStore, total: int) -> tuple[float, float, float]:
    app = web.Application()
    app.router.add_post("/", handler(mode, store))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, f"http://127.0.0.1:{port}/", str(total)
        )
        if await client.wait() != 0:
            raise RuntimeError("client failed")
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        await runner.cleanup()
    gib = total / GIB
    return (
        (after.ru_utime - before.ru_utime) / gib,
        (after.ru_stime - before.ru_stime) / gib,
        total / elapsed / 1e6,
    )


async def main() -> int:
    total = GIB
    server = None
    url = os.environ.get("S3_ENDPOINT_URL")
    if url is None:
        tmp = Path(tempfile.mkdtemp(prefix="darkroom-floor-"))
        server = start_s3_standin(free_port(), tmp)
        url = server.url
    try:
        settings = CommonSettings(s3_endpoint_url=url, s3_bucket=f"floor-{secrets.token_hex(3)}")
        async with open_object_store(settings) as store:
            await store.ensure_bucket()
            print("mode               user  system   total CPU-s/GiB    MB/s")
            for mode in ("receive", "forward", "forward+sha256"):
                user, system, rate = await measure(mode, store, total)
                print(f"{mode:16} {user:6.2f} {system:7.2f} {user + system:9.2f} {rate:13.0f}")
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

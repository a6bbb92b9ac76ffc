"""tus upload benchmark: darkroom's tus endpoint next to tus's own Node server.

One file (default 1 GiB, and 256 MiB before it) goes, in the same run and to the same S3 server,
through
  1. darkroom-tus: upload-ingest's ``/v1/tus/`` (its own process, as in chunked_upload.py);
  2. @tus/server: @tus/server 2.x with @tus/s3-store 2.x (npm, pinned in package-lock.json;
     benchmarks/tus_peer_server.mjs, its own process), 8 MiB parts like darkroom's;
  3. chunked: darkroom's own index-based chunked upload, as ``make bench-chunked`` sends it
     (8 MiB chunks, 4 in parallel);
  4. floor, for PATCHes under a part: ``benchmarks/tus_floor_server.py``, the least any tus server
     of several replicas must do per PATCH (a piece object, one conditional MongoDB update, a part
     every 8 MiB), with nothing of darkroom's.
(1), (2) and (4) get the same client: a plain tus client in this process that creates the upload and
sends PATCHes one after the other, 8 MiB each, then again with 1 MiB ones (under S3's 5 MiB part
minimum, so both servers keep the rest of each PATCH in a temporary object for the next one).

Per path it prints the server process's CPU-seconds per GiB (user/system), its peak RSS during
that upload (the peak is reset before each one through /proc/PID/clear_refs), the throughput the
client saw, and the ratios darkroom-tus / @tus/server, darkroom-tus / chunked and darkroom-tus /
floor (and floor / chunked: what the PATCH size costs before darkroom adds anything) of CPU per
GiB.
The client's and the S3 stand-in's CPU are not counted. A benchmark: it asserts nothing about
time; it only checks that each upload arrived whole.

@tus/s3-store runs as its README configures it: the AWS SDK then computes a CRC32 of every part
it sends (its default since early 2025); AWS_REQUEST_CHECKSUM_CALCULATION=WHEN_REQUIRED in the
environment turns that off (the SDK reads it), for a comparison without it.

    python -m benchmarks.tus_upload [--sizes-mib 256,1024] [--patch-mib 8,1]

Sizes also from BENCH_TUS_SIZES_MIB, PATCH sizes from BENCH_TUS_PATCH_MIB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from darkroom_ingest.settings import IngestSettings
from darkroom_ingest.tus.protocol import format_metadata
from darkroom_kit.storage import MIB, S3ObjectStore, open_object_store
from yarl import URL

from benchmarks.chunked_upload import CHUNK, Chunks, through_api
from benchmarks.harness import GIB, ApiUnderTest, Progress, api_under_test, cpu_seconds, status_mb
from darkroom_dev.servers import free_port, port_open, wait_until

ROOT = Path(__file__).resolve().parent.parent
PEER_SCRIPT = ROOT / "benchmarks" / "tus_peer_server.mjs"
TUS = {"Tus-Resumable": "1.0.0"}
WARM_UP = 64 * MIB
TIMEOUT = aiohttp.ClientTimeout(total=3600)


@dataclass
class Row:
    size: int
    sending: str  # how the client sent it
    path: str
    elapsed: float
    user: float
    system: float
    peak_rss_mb: float

    @property
    def cpu_per_gib(self) -> float:
        return (self.user + self.system) / (self.size / GIB)

    @property
    def mb_s(self) -> float:
        return self.size / self.elapsed / 1e6


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM (Linux 4.0+), so that the peak read after an upload is that upload's."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Pieces:
    """The bytes of :class:`Chunks` (the chunked path's file) cut into PATCH bodies."""

    def __init__(self, chunks: Chunks, patch_size: int) -> None:
        assert CHUNK % patch_size == 0, "a PATCH never spans two chunks"
        self.chunks, self.patch_size = chunks, patch_size
        self._index, self._block = -1, b""

    def at(self, offset: int) -> bytes:
        index = offset // CHUNK
        if index != self._index:
            self._index, self._block = index, self.chunks[index]
        start = offset - index * CHUNK
        return self._block[start : start + self.patch_size]


@dataclass
class Sent:
    url: str
    elapsed: float
    user: float
    system: float
    photo_id: str | None


async def tus_send(
    http: aiohttp.ClientSession,
    endpoint: str,
    pid: int,
    chunks: Chunks,
    patch_size: int,
    headers: dict[str, str],
    meta: str,
    label: str,
) -> Sent:
    """Create a tus upload of ``chunks`` and PATCH it in ``patch_size`` pieces, one after the
    other; the server's CPU from the creation to the last answer."""
    progress = Progress(label, chunks.size)
    pieces = Pieces(chunks, patch_size)
    user0, sys0 = cpu_seconds(pid)
    started = time.perf_counter()
    created = await http.post(
        endpoint,
        headers={**TUS, **headers, "Upload-Length": str(chunks.size), "Upload-Metadata": meta},
    )
    assert created.status == 201, (created.status, await created.text())
    url = str(URL(endpoint).join(URL(created.headers["Location"])))
    offset = 0
    photo_id = None
    while offset < chunks.size:
        body = pieces.at(offset)
        resp = await http.patch(
            url,
            data=body,
            headers={
                **TUS,
                **headers,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
        )
        if resp.status != 204:
            raise RuntimeError(f"{label}: PATCH at {offset}: {resp.status} {await resp.text()}")
        await resp.read()
        offset += len(body)
        assert int(resp.headers["Upload-Offset"]) == offset, (resp.headers, offset)
        photo_id = resp.headers.get("X-Darkroom-Photo-Id", photo_id)
        progress.add(len(body))
    elapsed = time.perf_counter() - started
    user1, sys1 = cpu_seconds(pid)
    progress.end()
    return Sent(url, elapsed, user1 - user0, sys1 - sys0, photo_id)


# ---- the three paths ----------------------------------------------------------------------------


async def darkroom_tus(api: ApiUnderTest, chunks: Chunks, patch_size: int, label: str) -> Row:
    reset_peak_rss(api.pid)
    meta = format_metadata(
        {"event": api.event_id, "filename": f"tus-{chunks.size}.mp4", "filetype": "video/mp4"}
    )
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        sent = await tus_send(
            http, f"{api.url}/v1/tus/", api.pid, chunks, patch_size, api.headers, meta, label
        )
        assert sent.photo_id is not None, "the last PATCH made no photo"
        gone = await http.delete(f"{api.url}/v1/photos/{sent.photo_id}", headers=api.headers)
        assert gone.status < 300, await gone.text()
    rss = status_mb(api.pid, "VmHWM")
    return Row(
        chunks.size, f"{patch_size // MIB} MiB", label, sent.elapsed, sent.user, sent.system, rss
    )


@dataclass
class Peer:
    url: str
    pid: int
    store: S3ObjectStore
    version: str


@contextlib.asynccontextmanager
async def peer_server(settings: IngestSettings) -> AsyncIterator[Peer]:
    """@tus/server with @tus/s3-store as its own process, on a bucket of its own on the same
    S3 server."""
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node (Node.js 20.19+) is required: the peer is @tus/server")
    package = ROOT / "node_modules" / "@tus" / "server" / "package.json"
    if not package.exists():
        raise SystemExit(f"{package} is missing: run `make install` (npm ci from the lock)")
    versions = ", ".join(
        f"{name} {json.loads(manifest.read_text())['version']}"
        for name in ("@tus/server", "@tus/s3-store")
        for manifest in [ROOT / "node_modules" / name / "package.json"]
    )
    peer_settings = settings.model_copy(update={"s3_bucket": f"{settings.s3_bucket}-tus-peer"})
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
        "S3_BUCKET": peer_settings.s3_bucket,
        "S3_ACCESS_KEY": settings.s3_access_key.get_secret_value(),
        "S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "S3_REGION": settings.s3_region,
        "PART_SIZE": str(CHUNK),
    }
    # The SDK's notice that its releases after January 2027 need Node 22 (the lock pins it).
    env.setdefault("AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED", "true")
    async with open_object_store(peer_settings) as store:
        await store.ensure_bucket()
        proc = await asyncio.create_subprocess_exec(
            node, str(PEER_SCRIPT), env=env, stdout=asyncio.subprocess.PIPE, cwd=ROOT
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            if json.loads(line or b"{}").get("listening") != port:
                raise RuntimeError(f"@tus/server did not start: {line!r}")
            yield Peer(f"http://127.0.0.1:{port}/files/", proc.pid, store, versions)
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()


async def peer_tus(peer: Peer, chunks: Chunks, patch_size: int, label: str) -> Row:
    reset_peak_rss(peer.pid)
    meta = format_metadata({"filename": f"tus-{chunks.size}.mp4", "filetype": "video/mp4"})
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        sent = await tus_send(http, peer.url, peer.pid, chunks, patch_size, {}, meta, label)
    rss = status_mb(peer.pid, "VmHWM")
    key = sent.url.rstrip("/").rsplit("/", 1)[1]
    stored = await peer.store.head(key)
    assert stored.size == chunks.size, (stored, chunks.size)
    # Gone again, so that the S3 stand-in (all in RAM) does not grow with every round.
    await peer.store.delete_many([key, f"{key}.info"])
    return Row(
        chunks.size, f"{patch_size // MIB} MiB", label, sent.elapsed, sent.user, sent.system, rss
    )


@contextlib.asynccontextmanager
async def floor_server(api: ApiUnderTest) -> AsyncIterator[tuple[str, int]]:
    """benchmarks/tus_floor_server.py as its own process, on the same S3 and MongoDB servers."""
    port = free_port()
    env = {
        **os.environ,
        "S3_ENDPOINT_URL": api.settings.s3_endpoint_url or "",
        "S3_BUCKET": api.settings.s3_bucket,
        "MONGO_URL": api.settings.mongo_url,
        "MONGO_DB": api.settings.mongo_db,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.tus_floor_server", str(port), str(CHUNK), env=env
    )
    try:
        await asyncio.to_thread(wait_until, lambda: port_open("127.0.0.1", port), 30, "floor")
        yield f"http://127.0.0.1:{port}/files/", proc.pid
    finally:
        proc.terminate()
        await proc.wait()


async def floor_tus(floor: tuple[str, int], chunks: Chunks, patch_size: int) -> Row:
    url, pid = floor
    reset_peak_rss(pid)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        sent = await tus_send(http, url, pid, chunks, patch_size, {}, "", "floor")
    rss = status_mb(pid, "VmHWM")
    return Row(
        chunks.size, f"{patch_size // MIB} MiB", "floor", sent.elapsed, sent.user, sent.system, rss
    )


async def chunked(api: ApiUnderTest, chunks: Chunks, label: str) -> Row:
    reset_peak_rss(api.pid)
    elapsed, user, system = await through_api(api, chunks, f"chunked-{chunks.size}.mp4")
    rss = status_mb(api.pid, "VmHWM")
    return Row(chunks.size, "8 MiB x4", label, elapsed, user, system, rss)


# ---- the run ------------------------------------------------------------------------------------


def print_rows(rows: list[Row]) -> None:
    print()
    print(
        f"{'file':>9}  {'sent as':9} {'path':13} {'MB/s':>7}  {'CPU-s/GiB':>9} "
        f"{'(user/sys)':>13}  {'peak RSS':>9}"
    )
    for r in rows:
        gib = r.size / GIB
        split = f"({r.user / gib:.2f}/{r.system / gib:.2f})"
        print(
            f"{r.size // MIB:5d} MiB  {r.sending:9} {r.path:13} {r.mb_s:7.1f}  "
            f"{r.cpu_per_gib:9.2f} {split:>13}  {r.peak_rss_mb:6.0f} MB"
        )
    print()
    print("CPU per GiB, ratios (lower is better for darkroom):")
    for size in sorted({r.size for r in rows}):
        ours = {r.sending: r for r in rows if r.size == size and r.path == "darkroom-tus"}
        peers = {r.sending: r for r in rows if r.size == size and r.path == "@tus/server"}
        floors = {r.sending: r for r in rows if r.size == size and r.path == "floor"}
        base = next((r for r in rows if r.size == size and r.path == "chunked"), None)
        for sending, row in ours.items():
            parts = [f"{size // MIB:5d} MiB, {sending} PATCHes:"]
            if sending in peers:
                peer = peers[sending]
                parts.append(f"darkroom-tus/@tus-server {row.cpu_per_gib / peer.cpu_per_gib:5.2f}")
            if base is not None:
                parts.append(f"darkroom-tus/chunked {row.cpu_per_gib / base.cpu_per_gib:5.2f}")
            if sending in floors:
                floor = floors[sending]
                parts.append(f"darkroom-tus/floor {row.cpu_per_gib / floor.cpu_per_gib:5.2f}")
                if base is not None:
                    parts.append(f"floor/chunked {floor.cpu_per_gib / base.cpu_per_gib:5.2f}")
            print("  " + "   ".join(parts))


def sizes_from(value: str) -> list[int]:
    return [int(s) * MIB for s in value.split(",") if s.strip()]


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--sizes-mib",
        default=os.environ.get("BENCH_TUS_SIZES_MIB") or "256,1024",
        help="file sizes in MiB, comma-separated (default 256,1024)",
    )
    parser.add_argument(
        "--patch-mib",
        default=os.environ.get("BENCH_TUS_PATCH_MIB") or "8,1",
        help="the tus client's PATCH sizes in MiB, one round each (default 8,1)",
    )
    args = parser.parse_args()
    sizes = sizes_from(args.sizes_mib)
    patch_sizes = sizes_from(args.patch_mib)
    async with (
        api_under_test({"UPLOAD_CHUNK_BYTES": str(CHUNK)}) as api,
        peer_server(api.settings) as peer,
        floor_server(api) as floor,
    ):
        print(
            f"darkroom upload-ingest pid {api.pid}; {peer.version} pid {peer.pid}; "
            f"S3 {api.settings.s3_endpoint_url}; parts of {CHUNK // MIB} MiB on both servers"
        )
        if not reset_peak_rss(api.pid):
            print("(cannot reset peak RSS here: the figures are each process's peak so far)")
        warm = Chunks(WARM_UP)
        await darkroom_tus(api, warm, CHUNK, "warm-up")
        await peer_tus(peer, warm, CHUNK, "warm-up")
        await chunked(api, warm, "warm-up")
        await floor_tus(floor, warm, MIB)
        rows: list[Row] = []
        for size in sizes:
            chunks = Chunks(size)
            for patch_size in patch_sizes:
                rows.append(await darkroom_tus(api, chunks, patch_size, "darkroom-tus"))
                rows.append(await peer_tus(peer, chunks, patch_size, "@tus/server"))
                if patch_size < CHUNK:
                    rows.append(await floor_tus(floor, chunks, patch_size))
            rows.append(await chunked(api, chunks, "chunked"))
        print_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

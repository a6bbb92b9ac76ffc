"""The streaming ZIP writer: throughput, CPU-seconds per GiB and peak RSS of an archive of 100
files of about 20 MB (2 GiB), next to a bare loop in the same run that reads the same objects and
uploads them as one multipart object with the same client and part size.

Each side runs in a child process of its own (started fresh, so its peak RSS is its own); its
CPU time, throughput and RSS are those of its work (not its start-up), its peak RSS is the
process's (VmHWM). The archive writer does what the bare loop does plus the
ZIP (a CRC-32 of every byte), the SHA-256 of the archive, and the bookkeeping. Targets (issue
18): at least 0.8 of the bare loop's throughput, peak RSS under 200 MB, the same at 0.5 and
2 GiB. With the moto_server stand-in (started here unless S3_ENDPOINT_URL is set), moto's own
CPU is printed too: it, not the client, is what bounds both sides on one machine.

    python -m benchmarks.archive [--gib 2] [--files 100] [--part-mib 8]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from darkroom_kit.archive import ArchiveEntry, write_archive
from darkroom_kit.settings import CommonSettings
from darkroom_kit.storage import MIB, S3ObjectStore, open_object_store

from benchmarks.harness import GIB, Progress, cpu_seconds, status_mb
from darkroom_dev.servers import free_port, start_s3_standin

PREFIX = "bench/src/"


def settings(endpoint: str, bucket: str) -> CommonSettings:
    return CommonSettings(s3_endpoint_url=endpoint, s3_bucket=bucket)


async def fill(store: S3ObjectStore, files: int, size: int) -> list[tuple[str, int]]:
    """``files`` objects of ``size`` bytes (each its own bytes: a random block, turned)."""
    block = os.urandom(size)
    objects = [(f"{PREFIX}{i:04d}.jpg", size) for i in range(files)]
    limit = asyncio.Semaphore(4)
    progress = Progress("fill", files * size)

    async def one(i: int, key: str) -> None:
        async with limit:
            turn = (i * 7919) % size
            data = block[turn:] + block[:turn]
            if size >= 5 * MIB:  # as a multipart upload: one PUT of 20 MB is slow on moto
                writer = store.writer(key, "image/jpeg", 8 * MIB)
                for start in range(0, size, MIB):
                    await writer.write(data[start : start + MIB])
                await writer.close()
            else:
                await store.put_bytes(key, data, "image/jpeg")
            progress.add(size)

    await asyncio.gather(*(one(i, key) for i, (key, _) in enumerate(objects)))
    progress.end()
    return objects


# ---- the two sides, each run as a child process ---------------------------------------------


async def bare_loop(store: S3ObjectStore, objects: list[tuple[str, int]], part: int) -> int:
    """Every object read in order and sent on as one multipart object: the floor."""
    progress = Progress("bare", sum(size for _, size in objects))
    writer = store.writer("bench/bare.bin", "application/octet-stream", part)
    try:
        for key, _ in objects:
            async with store.open_stream(key) as (_, chunks):
                async for chunk in chunks:
                    await writer.write(chunk)
                    progress.add(len(chunk))
        stored = await writer.close()
    except BaseException:
        await writer.abort()
        raise
    progress.end()
    return stored.size


async def archive(store: S3ObjectStore, objects: list[tuple[str, int]], part: int) -> int:
    progress = Progress("archive", sum(size for _, size in objects))
    done = 0

    async def report(files: int, bytes_done: int) -> None:
        nonlocal done
        progress.add(bytes_done - done)
        done = bytes_done

    shot = datetime(2026, 6, 20, 12, 0, tzinfo=UTC)
    entries = [
        ArchiveEntry(key, key.rsplit("/", 1)[1], size, shot + timedelta(seconds=i))
        for i, (key, size) in enumerate(objects)
    ]
    result = await write_archive(
        store,
        entries,
        "bench/archive.zip",
        part_size=part,
        progress=report,
        progress_bytes=16 * MIB,
    )
    progress.end()
    return result.size


def own_cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def child(side: str, spec: dict[str, Any]) -> dict[str, float]:
    """One side's work and its figures: its CPU from just before to just after the work (the
    interpreter's start-up and imports left out)."""
    objects = [(str(key), int(size)) for key, size in spec["objects"]]
    async with open_object_store(settings(spec["endpoint"], spec["bucket"])) as store:
        rss_before = status_mb(os.getpid(), "VmRSS")
        user0, sys0 = own_cpu()
        started = time.perf_counter()
        run = archive if side == "archive" else bare_loop
        size = await run(store, objects, int(spec["part"]))
        elapsed = time.perf_counter() - started
        user1, sys1 = own_cpu()
    return {
        "size": size,
        "seconds": elapsed,
        "user": user1 - user0,
        "sys": sys1 - sys0,
        "rss_before_mb": rss_before,
        # VmHWM, not the rusage of the exited child: Linux carries the forked parent's peak
        # across exec into the child's ru_maxrss.
        "peak_rss_mb": status_mb(os.getpid(), "VmHWM"),
    }


def run_child(side: str, spec: dict[str, Any]) -> dict[str, float]:
    """One side in a fresh process (its progress on this one's output): its figures."""
    folder = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    (folder / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.archive", "--child", side, "--spec", str(folder)]
    )
    if proc.wait() != 0:
        raise SystemExit(f"the {side} child failed ({proc.returncode})")
    figures: dict[str, float] = json.loads((folder / "figures.json").read_text())
    for name in ("spec.json", "figures.json"):
        (folder / name).unlink()
    folder.rmdir()
    figures["cpu"] = figures["user"] + figures["sys"]
    return figures


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=2.0, help="archive size (default 2)")
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument("--child", choices=["archive", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    return parser.parse_args()


async def main(args: argparse.Namespace) -> int:
    size = int(args.gib * GIB) // args.files
    endpoint, server = os.environ.get("S3_ENDPOINT_URL"), None
    if endpoint is None:
        server = start_s3_standin(free_port(), Path(tempfile.mkdtemp(prefix="darkroom-s3-")))
        endpoint = server.url
    server_pid = server.process.pid if server is not None and server.process else None
    bucket = f"bench-archive-{secrets.token_hex(3)}"
    try:
        async with open_object_store(settings(endpoint, bucket)) as store:
            await store.ensure_bucket()
            print(f"filling {bucket}: {args.files} objects of {size / 1e6:.1f} MB ...", flush=True)
            objects = await fill(store, args.files, size)
            spec: dict[str, Any] = {
                "endpoint": endpoint,
                "bucket": bucket,
                "objects": objects,
                "part": args.part_mib * MIB,
            }
            rows = {}
            for side in ("bare", "archive"):
                server_before = sum(cpu_seconds(server_pid)) if server_pid else 0.0
                rows[side] = await asyncio.to_thread(run_child, side, spec)
                if server_pid:
                    rows[side]["server_cpu"] = sum(cpu_seconds(server_pid)) - server_before
            # The archive holds what the bare object does, plus the ZIP's records.
            zipped = await store.head("bench/archive.zip")
            digest = hashlib.sha256()
            async with store.open_stream("bench/archive.zip") as (_, chunks):
                async for chunk in chunks:
                    digest.update(chunk)
            await store.delete_many(
                [k for k, _ in objects] + ["bench/bare.bin", "bench/archive.zip"]
            )
    finally:
        if server is not None:
            server.stop()

    total = args.files * size
    print()
    print(
        f"{args.files} files of {size / 1e6:.1f} MB = {total / GIB:.2f} GiB, parts of "
        f"{args.part_mib} MiB; archive {zipped.size} B, sha256 {digest.hexdigest()[:16]}..."
    )
    print(
        f"{'':8} {'MB/s':>7} {'CPU-s/GiB':>10} {'(user/sys)':>13} {'peak RSS':>9}"
        f" {'RSS before':>11} {'moto CPU-s/GiB':>15}"
    )
    for side, row in rows.items():
        gib = row["size"] / GIB
        moto = f"{row['server_cpu'] / gib:15.2f}" if "server_cpu" in row else f"{'-':>15}"
        print(
            f"{side:8} {row['size'] / row['seconds'] / 1e6:7.1f} {row['cpu'] / gib:10.2f}"
            f" ({row['user'] / gib:5.2f}/{row['sys'] / gib:5.2f})"
            f" {row['peak_rss_mb']:6.0f} MB {row['rss_before_mb']:8.0f} MB {moto}"
        )
    ratio = (rows["archive"]["size"] / rows["archive"]["seconds"]) / (
        rows["bare"]["size"] / rows["bare"]["seconds"]
    )
    print(f"throughput ratio archive/bare {ratio:.2f} (target >= 0.80); peak RSS target < 200 MB")
    return 0


def cli() -> int:
    args = parse_args()
    if args.child:  # one side, in its own process (run_child)
        folder = Path(args.spec)
        figures = asyncio.run(child(args.child, json.loads((folder / "spec.json").read_text())))
        (folder / "figures.json").write_text(json.dumps(figures))
        return 0
    return asyncio.run(main(args))


if __name__ == "__main__":
    sys.exit(cli())

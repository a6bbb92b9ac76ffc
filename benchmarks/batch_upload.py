"""Batch upload benchmark (issue 2's figures).

Uploads ~1 GiB as one multipart batch of 20 MB files through the upload-ingest API (run as its own
process, so its CPU time and peak RSS can be read from /proc) and, in the same run against the same
S3 server, the same files straight to S3 with the same client library (aiobotocore put_object).
Rounds alternate baseline and API, so a noisy neighbour hurts both alike.

Prints: API CPU-seconds per GiB, API peak RSS, both throughputs and their ratio.
Targets: <= 2 CPU-s/GiB, peak RSS < 150 MB, ratio >= 0.8.

Uses MONGO_URL / S3_ENDPOINT_URL / AMQP_URL when set; otherwise starts the embedded stand-ins.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

import aiohttp
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.storage import open_object_store

from benchmarks.harness import GIB, Progress, api_under_test, cpu_seconds, status_mb


def make_files(total: int, size: int) -> list[tuple[str, bytes]]:
    """JPEG-framed random bytes: sniffed as JPEG, complete (ends with EOI), incompressible."""
    body = bytearray(os.urandom(size))
    files = []
    for i in range((total + size - 1) // size):
        body[3:11] = i.to_bytes(8, "big")  # every file distinct
        data = b"\xff\xd8\xff" + bytes(body[3 : size - 2]) + b"\xff\xd9"
        files.append((f"img-{i:04d}.jpg", data))
    return files


CLOSING = b"--b--\r\n"


def part_header(name: str) -> bytes:
    """The multipart framing before one file (boundary ``b``); CRLF follows its data."""
    return (
        f'--b\r\nContent-Disposition: form-data; name="photos"; filename="{name}"'
        "\r\nContent-Type: image/jpeg\r\n\r\n"
    ).encode()


async def direct_to_s3(settings: IngestSettings, files: list[tuple[str, bytes]]) -> float:
    progress = Progress("baseline", sum(len(d) for _, d in files))
    async with open_object_store(settings) as store:
        started = time.perf_counter()
        for name, data in files:
            await store.put_bytes(f"bench-direct/{name}", data, "image/jpeg")
            progress.add(len(data))
        elapsed = time.perf_counter() - started
        await store.delete_many([f"bench-direct/{n}" for n, _ in files])
    progress.end()
    return elapsed


async def direct_multipart(
    settings: IngestSettings, files: list[tuple[str, bytes]], part_size: int
) -> float:
    """The same S3 operations the API performs (multipart, same part size), from the client."""
    progress = Progress("baseline2", sum(len(d) for _, d in files))
    async with open_object_store(settings) as store:
        started = time.perf_counter()
        for name, data in files:
            writer = store.writer(f"bench-multipart/{name}", "image/jpeg", part_size)
            for start in range(0, len(data), 1 << 20):
                await writer.write(data[start : start + (1 << 20)])
            await writer.close()
            progress.add(len(data))
        elapsed = time.perf_counter() - started
        await store.delete_many([f"bench-multipart/{n}" for n, _ in files])
    progress.end()
    return elapsed


async def through_api(
    api: str, token: str, event_id: str, files: list[tuple[str, bytes]], pid: int
) -> tuple[float, float, float]:
    """Upload the batch; returns (seconds, user CPU-s, system CPU-s) of the API for the upload
    alone (the clean-up deletes afterwards are not counted)."""
    progress = Progress("API", sum(len(d) for _, d in files))

    async def body():  # type: ignore[no-untyped-def]
        # Streamed by hand so the benchmark client does not copy 1 GiB into one buffer first.
        for name, data in files:
            yield part_header(name)
            for start in range(0, len(data), 1 << 20):
                yield data[start : start + (1 << 20)]
            progress.add(len(data))
            yield b"\r\n"
        yield CLOSING

    length = sum(len(part_header(n)) + len(d) + 2 for n, d in files) + len(CLOSING)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        user0, sys0 = cpu_seconds(pid)
        started = time.perf_counter()
        resp = await http.post(
            f"{api}/v1/events/{event_id}/photos",
            data=body(),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Length": str(length),
                "Content-Type": "multipart/form-data; boundary=b",
            },
        )
        result = await resp.json()
        elapsed = time.perf_counter() - started
        user1, sys1 = cpu_seconds(pid)
        progress.end()
        if resp.status != 201 or result["skipped"]:
            raise RuntimeError(f"upload failed: {resp.status} {str(result)[:500]}")
        ids = [p["id"] for p in result["uploaded"]]
        for photo_id in ids:  # keep the S3 server's memory flat between rounds
            await http.delete(
                f"{api}/v1/photos/{photo_id}", headers={"Authorization": f"Bearer {token}"}
            )
    return elapsed, user1 - user0, sys1 - sys0


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-mib", type=int, default=1024)
    parser.add_argument("--file-mb", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    async with api_under_test() as api:
        pid = api.pid
        settings = api.settings
        files = make_files(args.total_mib * 1024 * 1024, args.file_mb * 1_000_000)
        total = sum(len(d) for _, d in files)
        print(
            f"{len(files)} files of {args.file_mb} MB = {total / GIB:.2f} GiB, "
            f"{args.rounds} round(s); API pid {pid}"
        )
        token, event = api.token, {"id": api.event_id}
        # Warm both paths up (connections, the S3 server's allocator) before measuring.
        warm = files[:3]
        await direct_to_s3(settings, warm)
        await through_api(api.url, token, event["id"], warm, pid)
        idle_rss = status_mb(pid, "VmRSS")
        base_times, multi_times, api_times, cpu_per_gib, user_sys = [], [], [], [], []
        for round_no in range(args.rounds):

            async def api_round() -> None:
                elapsed, user, system = await through_api(api.url, token, event["id"], files, pid)
                api_times.append(elapsed)
                gib = total / GIB
                cpu_per_gib.append((user + system) / gib)
                user_sys.append((user / gib, system / gib))

            # Alternate which side goes first, so drift in the shared machine hits both alike.
            if round_no % 2 == 0:
                base_times.append(await direct_to_s3(settings, files))
                multi_times.append(
                    await direct_multipart(settings, files, settings.upload_part_bytes)
                )
                await api_round()
            else:
                await api_round()
                multi_times.append(
                    await direct_multipart(settings, files, settings.upload_part_bytes)
                )
                base_times.append(await direct_to_s3(settings, files))

        def mbs(times: list[float]) -> list[float]:
            return [total / t / 1e6 for t in times]

        def line(label: str, values: list[float], fmt: str = ".1f", unit: str = "MB/s") -> None:
            rounds = ", ".join(f"{x:{fmt}}" for x in values)
            print(f"{label:52} {statistics.median(values):7{fmt}} {unit}  (rounds: {rounds})")

        base_mbs, multi_mbs, api_mbs = mbs(base_times), mbs(multi_times), mbs(api_times)
        print()
        line("baseline: aiobotocore put_object straight to S3", base_mbs)
        line("baseline 2: the same multipart parts straight to S3", multi_mbs)
        line("through the API (one multipart/form-data batch)", api_mbs)
        line(
            "ratio API / baseline (target >= 0.80)",
            [a / b for a, b in zip(api_mbs, base_mbs, strict=True)],
            ".2f",
            "",
        )
        line(
            "ratio API / baseline 2 (same S3 operations)",
            [a / b for a, b in zip(api_mbs, multi_mbs, strict=True)],
            ".2f",
            "",
        )
        print(
            f"API CPU per GiB:                  {statistics.median(cpu_per_gib):.2f} CPU-s  "
            f"(target <= 2.0; rounds: {', '.join(f'{x:.2f}' for x in cpu_per_gib)})"
        )
        print(
            "  of which user / system:         "
            + ", ".join(f"{u:.2f} / {k:.2f}" for u, k in user_sys)
        )
        print(
            f"API peak RSS (VmHWM):             {status_mb(pid, 'VmHWM'):.0f} MB  "
            f"(target < 150; RSS before the rounds: {idle_rss:.0f} MB)"
        )
        return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

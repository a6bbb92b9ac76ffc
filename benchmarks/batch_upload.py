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
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aio_pika
import aiohttp
from darkroom_ingest.cli import create_token
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.messaging import QueueSpec, Topology, declare_consumer_queue
from darkroom_kit.storage import open_object_store

from darkroom_dev.servers import (
    ensure_rabbitmq,
    free_port,
    start_mongo_standin,
    start_s3_standin,
)
from darkroom_dev.stack import start_services

CLK = os.sysconf("SC_CLK_TCK")
GIB = 1024**3


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK, int(fields[12]) / CLK


def status_mb(pid: int, field: str) -> float:
    """VmHWM (peak RSS) or VmRSS of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_files(total: int, size: int) -> list[tuple[str, bytes]]:
    """JPEG-framed random bytes: sniffed as JPEG, complete (ends with EOI), incompressible."""
    body = bytearray(os.urandom(size))
    files = []
    for i in range((total + size - 1) // size):
        body[3:11] = i.to_bytes(8, "big")  # every file distinct
        data = b"\xff\xd8\xff" + bytes(body[3 : size - 2]) + b"\xff\xd9"
        files.append((f"img-{i:04d}.jpg", data))
    return files


class Progress:
    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self.start = label, total, 0, time.perf_counter()

    def add(self, n: int) -> None:
        self.done += n
        rate = self.done / max(1e-9, time.perf_counter() - self.start) / 1e6
        bar = "#" * int(30 * self.done / self.total)
        print(
            f"\r  {self.label:9} [{bar:30}] {self.done / 1e6:7.0f} MB {rate:6.1f} MB/s",
            end="",
            flush=True,
        )

    def end(self) -> None:
        print(flush=True)


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
            yield (
                f'--b\r\nContent-Disposition: form-data; name="photos"; filename="{name}"'
                "\r\nContent-Type: image/jpeg\r\n\r\n"
            ).encode()
            for start in range(0, len(data), 1 << 20):
                yield data[start : start + (1 << 20)]
            progress.add(len(data))
            yield b"\r\n"
        yield b"--b--\r\n"

    length = sum(len(c) for c in _frame_lengths(files))
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


def _frame_lengths(files: list[tuple[str, bytes]]) -> list[bytes]:
    out = []
    for name, data in files:
        out.append(
            (
                f'--b\r\nContent-Disposition: form-data; name="photos"; filename="{name}"'
                "\r\nContent-Type: image/jpeg\r\n\r\n"
            ).encode()
        )
        out.append(b"x" * len(data))
        out.append(b"\r\n")
    out.append(b"--b--\r\n")
    return out


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-mib", type=int, default=1024)
    parser.add_argument("--file-mb", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="darkroom-bench-"))
    servers = []
    env = dict(os.environ)
    if "MONGO_URL" not in env:
        servers.append(start_mongo_standin(tmp / "mongo", free_port(), tmp / "logs"))
        env["MONGO_URL"] = servers[-1].url
    if "S3_ENDPOINT_URL" not in env:
        servers.append(start_s3_standin(free_port(), tmp / "logs"))
        env["S3_ENDPOINT_URL"] = servers[-1].url
    env.setdefault("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    ensure_rabbitmq(env["AMQP_URL"])
    run = secrets.token_hex(3)
    env.update(
        {
            "AMQP_NAMESPACE": f"darkroom-bench.{run}",
            "MONGO_DB": f"bench_{run}",
            "S3_BUCKET": f"bench-{run}",
            "LOG_LEVEL": "WARNING",
        }
    )
    port = free_port()
    env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
    settings = IngestSettings(
        mongo_url=env["MONGO_URL"],
        s3_endpoint_url=env["S3_ENDPOINT_URL"],
        amqp_url=env["AMQP_URL"],
        mongo_db=env["MONGO_DB"],
        s3_bucket=env["S3_BUCKET"],
        amqp_namespace=env["AMQP_NAMESPACE"],
    )
    topology = Topology(settings.amqp_namespace)
    sink = QueueSpec(topology.queue("bench", "sink"), topology.events, ("#",), ())
    connection = await aio_pika.connect(settings.amqp_url)
    channel = await connection.channel()
    await declare_consumer_queue(channel, topology, sink, 5)
    services = await asyncio.to_thread(start_services, env, tmp / "logs", port, ["upload-ingest"])
    api_proc = services[0].process
    assert api_proc is not None
    try:
        files = make_files(args.total_mib * 1024 * 1024, args.file_mb * 1_000_000)
        total = sum(len(d) for _, d in files)
        print(
            f"{len(files)} files of {args.file_mb} MB = {total / GIB:.2f} GiB, "
            f"{args.rounds} round(s); API pid {api_proc.pid}"
        )
        token = await create_token(settings, "bench", ["photos.write", "events.write"], None)
        async with aiohttp.ClientSession() as http:
            event = await (
                await http.post(
                    f"{env['PUBLIC_BASE_URL']}/v1/events",
                    json={"name": "bench", "slug": f"bench-{run}"},
                    headers={"Authorization": f"Bearer {token}"},
                )
            ).json()
        # Warm both paths up (connections, the S3 server's allocator) before measuring.
        warm = files[:3]
        await direct_to_s3(settings, warm)
        await through_api(env["PUBLIC_BASE_URL"], token, event["id"], warm, api_proc.pid)
        idle_rss = status_mb(api_proc.pid, "VmRSS")
        base_times, multi_times, api_times, cpu_per_gib, user_sys = [], [], [], [], []
        for round_no in range(args.rounds):

            async def api_round() -> None:
                elapsed, user, system = await through_api(
                    env["PUBLIC_BASE_URL"], token, event["id"], files, api_proc.pid
                )
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
            f"API peak RSS (VmHWM):             {status_mb(api_proc.pid, 'VmHWM'):.0f} MB  "
            f"(target < 150; RSS before the rounds: {idle_rss:.0f} MB)"
        )
        return 0
    finally:
        api_proc.terminate()
        api_proc.wait(30)
        for name in sink.all_queue_names():
            await channel.queue_delete(name)
        for name in (topology.events, topology.commands, topology.dead_letter):
            await channel.exchange_delete(name)
        await connection.close()
        for server in servers:
            server.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

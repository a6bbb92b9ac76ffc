"""What the upload benchmarks share: servers, the API as its own process, /proc readings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import aiohttp
from darkroom_ingest.cli import create_token
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.messaging import QueueSpec, Topology, declare_consumer_queue, delete_queues
from darkroom_repair.app import queue_specs as repair_queues
from darkroom_thumbnailing.app import queue_spec as thumbnailing_queue
from darkroom_thumbnailing.settings import ThumbnailSettings

from darkroom_dev.servers import ensure_rabbitmq, free_port, start_mongo_standin, start_s3_standin
from darkroom_dev.stack import SERVICES, start_services

CLK = os.sysconf("SC_CLK_TCK")
GIB = 1024**3


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK, int(fields[12]) / CLK


def threads_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process's live threads so far, to the nanosecond (schedstat), where
    :func:`cpu_seconds` counts 10 ms ticks: for figures of a few tens of milliseconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine so far, all cores."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK, idle / CLK


def status_mb(pid: int, field: str) -> float:
    """VmHWM (peak RSS) or VmRSS of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class StatusLine:
    """A status that changes often: redrawn in place on a terminal; elsewhere (a log, CI) a
    plain line now and then, not one per update."""

    EVERY_S = 5.0

    def __init__(self) -> None:
        self._terminal = sys.stdout.isatty()
        self._last = time.perf_counter()
        self._text = ""

    def show(self, text: str) -> None:
        self._text = text
        if self._terminal:
            print(f"\r{text}", end="", flush=True)
        elif time.perf_counter() - self._last >= self.EVERY_S:
            self._last = time.perf_counter()
            print(text, flush=True)

    def end(self) -> None:
        print(("\r" if self._terminal else "") + self._text, flush=True)


class Progress:
    """A one-line progress bar: bytes, rate."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self.start = label, total, 0, time.perf_counter()
        self._line = StatusLine()

    def add(self, n: int) -> None:
        self.done += n
        rate = self.done / max(1e-9, time.perf_counter() - self.start) / 1e6
        bar = "#" * int(30 * self.done / self.total)
        self._line.show(f"  {self.label:9} [{bar:30}] {self.done / 1e6:7.0f} MB {rate:6.1f} MB/s")

    def end(self) -> None:
        self._line.end()


@dataclass
class ApiUnderTest:
    url: str
    pid: int
    token: str
    event_id: str
    settings: IngestSettings

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Stack:
    """The servers and a namespace of their own for one benchmark run."""

    env: dict[str, str]
    settings: IngestSettings
    logs: Path
    connection: aio_pika.abc.AbstractConnection


@contextlib.asynccontextmanager
async def stack_under_test(extra_env: dict[str, str] | None = None) -> AsyncIterator[Stack]:
    """The embedded stand-ins (or MONGO_URL / S3_ENDPOINT_URL / AMQP_URL) with this run's own
    namespace, database and bucket; its exchanges and queues are removed afterwards."""
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
            **(extra_env or {}),
        }
    )
    settings = IngestSettings(
        mongo_url=env["MONGO_URL"],
        s3_endpoint_url=env["S3_ENDPOINT_URL"],
        amqp_url=env["AMQP_URL"],
        mongo_db=env["MONGO_DB"],
        s3_bucket=env["S3_BUCKET"],
        amqp_namespace=env["AMQP_NAMESPACE"],
    )
    topology = Topology(settings.amqp_namespace)
    # Something must be bound to the events exchange: publishes are mandatory.
    sink = QueueSpec(topology.queue("bench", "sink"), topology.events, ("#",), ())
    connection = await aio_pika.connect(settings.amqp_url)
    channel = await connection.channel()
    await declare_consumer_queue(channel, topology, sink, 5)
    try:
        yield Stack(env, settings, tmp / "logs", connection)
    finally:
        # The queues the services under test declared too (quorum queues outlive their
        # consumers), each emptied before it goes and the waiting queues first.
        # benchmarks/webhooks.py removes webhook-dispatch's own.
        services = [
            thumbnailing_queue(topology, ThumbnailSettings(amqp_namespace=topology.namespace)),
            *repair_queues(topology),
        ]
        for spec in [*services, sink]:
            await delete_queues(connection, list(reversed(spec.all_queue_names())))
        for name in (topology.events, topology.commands, topology.dead_letter):
            await channel.exchange_delete(name)
        await connection.close()
        for server in servers:
            server.stop()


@contextlib.asynccontextmanager
async def api_under_test(extra_env: dict[str, str] | None = None) -> AsyncIterator[ApiUnderTest]:
    """upload-ingest as its own process on :func:`stack_under_test`, with a token and an event."""
    port = free_port(len(SERVICES))
    extra = {"PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", **(extra_env or {})}
    async with stack_under_test(extra) as stack:
        env, settings = stack.env, stack.settings
        services = await asyncio.to_thread(start_services, env, stack.logs, port, ["upload-ingest"])
        api = services[0].process
        assert api is not None
        try:
            token = await create_token(settings, "bench", ["photos.write", "events.write"], None)
            async with aiohttp.ClientSession() as http:
                resp = await http.post(
                    f"{env['PUBLIC_BASE_URL']}/v1/events",
                    # The same file goes up several times in one event (through darkroom and
                    # beside its peer and floor), and files of one size are compared: kept, so
                    # each upload measures the upload path, not the duplicate check (which
                    # reads back a file that arrived in pieces when one of its size is there).
                    json={"name": "bench", "slug": env["S3_BUCKET"], "keep_duplicates": True},
                    headers={"Authorization": f"Bearer {token}"},
                )
                event = await resp.json()
            yield ApiUnderTest(env["PUBLIC_BASE_URL"], api.pid, token, event["id"], settings)
        finally:
            api.terminate()
            api.wait(30)


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (a service's worker pool)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == pid and stat[0] != "Z":
                    found.append(int(entry.name))
    return found


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

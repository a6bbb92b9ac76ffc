"""``make run``: the whole system on this machine.

With nothing configured it starts the embedded default servers (the machine's RabbitMQ, nx-27017,
moto_server) on 127.0.0.1, data and logs under ``.data/``; with ``AMQP_URL``, ``MONGO_URL`` and
``S3_ENDPOINT_URL`` set it uses those servers and starts no stand-in. Then it runs the four
services and waits; Ctrl-C (or SIGTERM) stops everything it started, services first, gracefully.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

from darkroom_kit.storage import open_bucket

from darkroom_dev.servers import (
    Server,
    ensure_rabbitmq,
    start_mongo_standin,
    start_s3_standin,
    stop_rabbitmq,
    wait_until,
)

# The import source make run configures (IMPORT_SOURCES unset): a bucket of its own on the S3
# server, created on start, for trying imports out (README: "Import from an S3 prefix").
DROP_SOURCE = "drop"
DROP_BUCKET = "darkroom-drop"

SERVICES = [
    ("upload-ingest", "darkroom_ingest.main", 8080),
    ("thumbnailing", "darkroom_thumbnailing.main", 8081),
    ("metadata-repair", "darkroom_repair.main", 8082),
    ("webhook-dispatch", "darkroom_webhooks.main", 8083),
]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def start_services(
    env: dict[str, str], log_dir: Path, base_port: int | None = None, names: list[str] | None = None
) -> list[Server]:
    """Start the services as processes and wait until each says it is ready; if one does not,
    stop them all before raising. With ``base_port``, service i of SERVICES listens on
    ``base_port + i`` (take ``free_port(len(SERVICES))``)."""
    started: list[Server] = []
    log_dir.mkdir(parents=True, exist_ok=True)
    for offset, (name, module, default_port) in enumerate(SERVICES):
        if names is not None and name not in names:
            continue
        port = base_port + offset if base_port is not None else default_port
        service_env = {**env, "HTTP_PORT": str(port)}
        with (log_dir / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", module],
                env=service_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                # A process group of its own: a terminal's Ctrl-C goes to the whole foreground
                # group, and reached each service (and its rendering processes) at any point of
                # its start or its shutdown, as a KeyboardInterrupt in whatever code ran then
                # (tracebacks in the logs, a cleanup context interrupted half-way). Whoever
                # started the service stops it, with SIGTERM: a graceful drain.
                process_group=0,
            )
        started.append(Server(name, f"http://127.0.0.1:{port}", proc))
    try:
        for server in started:
            port = int(server.url.rsplit(":", 1)[1])

            def up(server: Server = server, port: int = port) -> bool:
                if server.process is not None and server.process.poll() is not None:
                    raise RuntimeError(f"{server.name} exited; see {log_dir / server.name}.log")
                return _ready(port)

            wait_until(up, 60, server.name)
    except BaseException:
        # Otherwise the others live on, consuming their queues on a shared broker.
        for server in started:
            server.stop()
        raise
    return started


def main() -> int:
    root = Path.cwd()
    data = root / ".data"
    logs = data / "logs"
    env = dict(os.environ)
    env.setdefault("LOG_JSON", "true")
    standins: list[Server] = []
    started_rabbit = False
    services: list[Server] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # Explicitly: a process started in the background by a non-interactive shell inherits SIGINT
    # as ignored, and Python then never raises KeyboardInterrupt.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if "MONGO_URL" not in env:
            # The embedded S3 keeps objects in RAM only, so records from an earlier run would
            # point at nothing: both stand-ins start empty together.
            if "S3_ENDPOINT_URL" not in env:
                shutil.rmtree(data / "mongo", ignore_errors=True)
            port = int(env.get("DARKROOM_MONGO_PORT", "27017"))
            standins.append(start_mongo_standin(data / "mongo", port, logs))
            env["MONGO_URL"] = standins[-1].url
        if "S3_ENDPOINT_URL" not in env:
            port = int(env.get("DARKROOM_S3_PORT", "9000"))
            standins.append(start_s3_standin(port, logs))
            env["S3_ENDPOINT_URL"] = standins[-1].url
            # moto_server ignores x-amz-copy-source-if-match (imports.py compares ETags).
            env.setdefault("S3_IGNORES_COPY_CONDITIONS", "true")
        env.setdefault("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
        started_rabbit = ensure_rabbitmq(env["AMQP_URL"])
        if "IMPORT_SOURCES" not in env:
            _create_bucket(env, DROP_BUCKET)
            env["IMPORT_SOURCES"] = json.dumps({DROP_SOURCE: {"bucket": DROP_BUCKET}})
        api_port = int(env.get("API_PORT", "8080"))
        env.setdefault("PUBLIC_BASE_URL", f"http://127.0.0.1:{api_port}")
        # Webhook receivers on this machine are how one tries darkroom out locally.
        env.setdefault("ALLOW_PRIVATE_NETWORKS", '["127.0.0.0/8", "::1/128"]')
        # A page on any origin may call the local API (a guest page, Uppy); none by default.
        env.setdefault("CORS_ALLOWED_ORIGINS", '["*"]')
        services = start_services(env, logs, base_port=api_port)
        print(_banner(env, standins, started_rabbit, logs), flush=True)
        while all(s.process is None or s.process.poll() is None for s in services):
            time.sleep(0.5)
        print("a service exited; stopping everything (see .data/logs)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # A second Ctrl-C while the services drain must not abandon the rest half-stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\nstopping...", flush=True)
        return 0
    except RuntimeError as exc:
        print(f"darkroom: {exc}", file=sys.stderr)
        return 1
    finally:
        for server in reversed(services):
            if server.process is not None and server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)
        for server in reversed(services):
            server.stop(timeout=35)  # the services drain for up to SHUTDOWN_GRACE_SECONDS (30)
        for server in reversed(standins):
            server.stop()
        if started_rabbit:
            stop_rabbitmq()


def _create_bucket(env: dict[str, str], bucket: str) -> None:
    async def create() -> None:
        async with open_bucket(
            env["S3_ENDPOINT_URL"],
            bucket,
            env.get("S3_ACCESS_KEY", "darkroom"),
            env.get("S3_SECRET_KEY", "darkroom-secret"),
            env.get("S3_REGION", "us-east-1"),
        ) as store:
            await store.ensure_bucket()

    async def unless_stopped() -> bool:
        # main()'s handlers raise KeyboardInterrupt wherever the code is: inside the S3 client's
        # context (an async generator) that left it "running", and asyncio's closing of it then
        # printed "athrow(): asynchronous generator is already running". Here a signal cancels
        # the work instead, which unwinds the client's context in order.
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(create())
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            return False
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        return True

    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        done = asyncio.run(unless_stopped())
    finally:
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
    if not done:
        raise KeyboardInterrupt


def _banner(env: dict[str, str], standins: list[Server], rabbit: bool, logs: Path) -> str:
    lines = [
        "",
        "darkroom is running",
        f"  API            {env['PUBLIC_BASE_URL']}",
        f"  OpenAPI        {env['PUBLIC_BASE_URL']}/openapi.json",
        f"  MongoDB        {env['MONGO_URL']}",
        f"  S3             {env['S3_ENDPOINT_URL']}",
        f"  RabbitMQ       {env['AMQP_URL']}{'  (started by make run)' if rabbit else ''}",
        f"  logs           {logs}",
        f"  import source  {_sources(env)}",
        "",
        "Make a token:   make token SCOPES=photos.read,photos.write,events.write,webhooks.manage",
        "Stop:           Ctrl-C",
    ]
    if standins:
        lines.insert(-3, "  (embedded stand-ins: their data lasts until Ctrl-C)")
    return "\n".join(lines)


def _sources(env: dict[str, str]) -> str:
    try:
        sources = json.loads(env.get("IMPORT_SOURCES") or "{}")
        return ", ".join(f"{name} (bucket {s['bucket']})" for name, s in sources.items())
    except (ValueError, TypeError, KeyError):
        return "(IMPORT_SOURCES is not valid JSON)"


if __name__ == "__main__":
    sys.exit(main())

"""The servers a test run uses, the settings that point a service at them, and the janitor that
removes what a test declared on the broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aio_pika
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.messaging import QueueSpec, Topology, delete_queues

if TYPE_CHECKING:
    from darkroom_dev.servers import Server


@dataclass
class Servers:
    mongo_url: str
    s3_url: str
    amqp_url: str
    real_mongo: bool
    real_s3: bool = False


def common_env(servers: Servers, run_id: str, namespace: str) -> dict[str, Any]:
    return {
        "mongo_url": servers.mongo_url,
        "mongo_db": f"darkroom_{run_id}",
        "amqp_url": servers.amqp_url,
        "amqp_namespace": namespace,
        "s3_endpoint_url": servers.s3_url,
        "s3_access_key": os.environ.get("S3_ACCESS_KEY", "darkroom"),
        "s3_secret_key": os.environ.get("S3_SECRET_KEY", "darkroom-secret"),
        "s3_bucket": f"darkroom-{run_id}",
        # The embedded moto_server ignores x-amz-copy-source-if-match; a real S3 does not.
        "s3_ignores_copy_conditions": not servers.real_s3,
        "log_json": False,
    }


def to_env(settings: dict[str, Any]) -> dict[str, str]:
    """Settings keyword arguments as the environment of a service process."""
    return {k.upper(): v if isinstance(v, str) else json.dumps(v) for k, v in settings.items()}


def cli_env(settings: IngestSettings) -> dict[str, str]:
    """The environment the server's ``darkroom`` command needs to reach the servers of
    ``settings`` (the database and the object store)."""
    return {
        "MONGO_URL": settings.mongo_url,
        "MONGO_DB": settings.mongo_db,
        "S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
        "S3_BUCKET": settings.s3_bucket,
        "S3_ACCESS_KEY": settings.s3_access_key.get_secret_value(),
        "S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "S3_REGION": settings.s3_region,
    }


class QueueJanitor:
    """Deletes the queues and exchanges a test declared (quorum queues outlive connections)."""

    def __init__(self) -> None:
        self.specs: list[QueueSpec] = []
        self.namespaces: set[str] = set()
        self.consumers: list[Any] = []

    def add(self, *specs: QueueSpec) -> None:
        self.specs.extend(specs)

    def stop_first(self, client: Any) -> None:
        """A test client whose app consumes these queues: it is closed before they are deleted
        (a consumer still running declares its queue again when the broker cancels it)."""
        self.consumers.append(client)

    async def clean(self, amqp_url: str) -> None:
        for client in self.consumers:
            await client.close()
        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel()
            for spec in self.specs:
                await delete_queues(connection, list(reversed(spec.all_queue_names())))
            for ns in self.namespaces:
                t = Topology(ns)
                for name in (t.events, t.commands, t.dead_letter):
                    await channel.exchange_delete(name)
        finally:
            await connection.close()


def run_cli(settings: IngestSettings, *args: str) -> subprocess.CompletedProcess[str]:
    """The server's ``darkroom`` command, as a real process against the servers of
    ``settings``."""
    return subprocess.run(
        [sys.executable, "-m", "darkroom_ingest.cli", *args],
        env={**os.environ, **cli_env(settings)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def start_service(env: dict[str, str], logs: Path, name: str) -> Server:
    """One darkroom service (``metadata-repair`` ...) as a real process with ``env``, its log in
    ``logs``: for the tests that kill it. Blocking: call it through ``asyncio.to_thread``."""
    from darkroom_dev.servers import free_port
    from darkroom_dev.stack import SERVICES, start_services

    [service] = start_services(env, logs, free_port(len(SERVICES)), names=[name])
    return service

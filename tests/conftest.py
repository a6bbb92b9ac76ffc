"""Shared fixtures: real servers over the network, isolated per test run.

RabbitMQ is the machine's real broker (AMQP_URL, default guest@127.0.0.1). MongoDB and S3 are the
embedded stand-ins (nx-27017, moto_server) started here on free ports, unless MONGO_URL and
S3_ENDPOINT_URL point at real servers: the same tests then run against those unchanged.
Each run gets its own exchange/queue namespace, database and bucket, so runs never see each other.
"""

from __future__ import annotations

import io
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from darkroom_kit.messaging import QueueSpec, Topology, delete_queues
from PIL import Image

from darkroom_dev.servers import (
    Server,
    ensure_rabbitmq,
    free_port,
    start_mongo_standin,
    start_s3_standin,
)


@dataclass
class Servers:
    mongo_url: str
    s3_url: str
    amqp_url: str
    real_mongo: bool


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    started: list[Server] = []
    tmp = Path(tempfile.mkdtemp(prefix="darkroom-test-"))
    mongo_url = os.environ.get("MONGO_URL")
    s3_url = os.environ.get("S3_ENDPOINT_URL")
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    if mongo_url is None:
        started.append(start_mongo_standin(tmp / "mongo", free_port(), tmp / "logs"))
    if s3_url is None:
        started.append(start_s3_standin(free_port(), tmp / "logs"))
    ensure_rabbitmq(amqp_url)
    try:
        yield Servers(
            mongo_url=mongo_url or started[0].url,
            s3_url=s3_url or started[-1].url,
            amqp_url=amqp_url,
            real_mongo=mongo_url is not None,
        )
    finally:
        for server in started:
            server.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("MONGO_URL"):
        return
    skip = pytest.mark.skip(reason="needs a real MongoDB: set MONGO_URL")
    for item in items:
        if "real_mongo" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def run_id() -> str:
    return "t" + secrets.token_hex(4)


@pytest.fixture
def namespace(run_id: str, request: pytest.FixtureRequest) -> str:
    """A namespace per test: its exchanges and queues are its own."""
    return f"darkroom-test.{run_id}.{secrets.token_hex(3)}"


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
        "log_json": False,
    }


@pytest.fixture
def settings_kwargs(servers: Servers, run_id: str, namespace: str) -> dict[str, Any]:
    return common_env(servers, run_id, namespace)


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


@pytest.fixture
async def janitor(servers: Servers, namespace: str) -> AsyncIterator[QueueJanitor]:
    j = QueueJanitor()
    j.namespaces.add(namespace)
    yield j
    await j.clean(servers.amqp_url)


# ---- test files ----------------------------------------------------------------------------


def jpeg_bytes(
    width: int = 1200,
    height: int = 800,
    *,
    orientation: int | None = None,
    captured: str | None = None,
    quality: int = 88,
    color: tuple[int, int, int] = (200, 40, 40),
) -> bytes:
    image = Image.new("RGB", (width, height), color)
    # A gradient, so the file is not trivially small and decoding does real work.
    for x in range(0, width, max(1, width // 16)):
        image.paste((x % 256, 80, 255 - x % 256), (x, 0, min(width, x + 8), height))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if captured is not None:
        exif[0x8769] = {0x9003: captured}
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, exif=exif.tobytes() if len(exif) else b"")
    return out.getvalue()


def png_bytes(width: int = 640, height: int = 480) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (width, height), (20, 120, 220, 200)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def make_jpeg() -> Callable[..., bytes]:
    return jpeg_bytes


@pytest.fixture
def make_png() -> Callable[..., bytes]:
    return png_bytes

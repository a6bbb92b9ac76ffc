"""Shared fixtures: real servers over the network, isolated per test run.

RabbitMQ is the machine's real broker (AMQP_URL, default guest@127.0.0.1). MongoDB and S3 are the
embedded stand-ins (nx-27017, moto_server) started here on free ports, unless MONGO_URL and
S3_ENDPOINT_URL point at real servers: the same tests then run against those unchanged.
Each run gets its own exchange/queue namespace, database and bucket, so runs never see each other.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from darkroom_dev.servers import (
    Server,
    ensure_rabbitmq,
    free_port,
    start_mongo_standin,
    start_s3_standin,
)
from tests.factories.media import jpeg_bytes, png_bytes
from tests.factories.servers import QueueJanitor, Servers, common_env


@pytest.fixture(scope="session", autouse=True)
def upload_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The upload client keeps its resume state in the user's state folder: the tests' own, not
    the home of whoever runs them (child processes inherit it)."""
    home = tmp_path_factory.mktemp("xdg-state")
    before = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(home)
    yield home
    if before is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = before


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
            real_s3=s3_url is not None,
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


@pytest.fixture
def settings_kwargs(servers: Servers, run_id: str, namespace: str) -> dict[str, Any]:
    return common_env(servers, run_id, namespace)


@pytest.fixture
async def janitor(servers: Servers, namespace: str) -> AsyncIterator[QueueJanitor]:
    j = QueueJanitor()
    j.namespaces.add(namespace)
    yield j
    await j.clean(servers.amqp_url)


# ---- test files ----------------------------------------------------------------------------


@pytest.fixture
def make_jpeg() -> Callable[..., bytes]:
    return jpeg_bytes


@pytest.fixture
def make_png() -> Callable[..., bytes]:
    return png_bytes

"""``make run`` (``darkroom-dev``) stopped with Ctrl-C as a terminal sends it: SIGINT to the
whole foreground process group. It must stop everything it started, quietly: no traceback, no
``KeyboardInterrupt`` and no "athrow(): asynchronous generator is already running", in its own
output or in the services' logs."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

import pytest

from darkroom_dev.servers import free_port
from darkroom_dev.stack import SERVICES
from tests.factories.e2e import stack_queues
from tests.factories.servers import QueueJanitor, Servers

pytestmark = pytest.mark.e2e

DEV = Path(sys.executable).parent / "darkroom-dev"
NOISE = ("Traceback", "KeyboardInterrupt", "athrow", "Error in atexit")


@pytest.fixture
def dev_namespace(namespace: str, janitor: QueueJanitor) -> str:
    """The runner's own namespace, its queues deleted after the test."""
    janitor.add(*stack_queues(namespace))
    return namespace


def dev_env(servers: Servers, namespace: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "MONGO_URL": servers.mongo_url,
        "S3_ENDPOINT_URL": servers.s3_url,
        "S3_IGNORES_COPY_CONDITIONS": "true",
        "AMQP_URL": servers.amqp_url,
        "AMQP_NAMESPACE": namespace,
        "MONGO_DB": f"darkroom_dev_{secrets.token_hex(4)}",
        "S3_BUCKET": f"darkroom-dev-{secrets.token_hex(4)}",
        "API_PORT": str(free_port(len(SERVICES))),
        **extra,
    }


async def ctrl_c(process: asyncio.subprocess.Process) -> tuple[int, str]:
    """SIGINT to the runner's whole group, as a terminal does; its exit code and its output."""
    os.killpg(process.pid, signal.SIGINT)
    out, _ = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


def noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(word in line for word in NOISE)]


def logged_noise(root: Path) -> dict[str, list[str]]:
    logs = root / ".data" / "logs"
    found = {p.name: noise(p.read_text(errors="replace")) for p in logs.glob("*.log")}
    return {name: lines for name, lines in found.items() if lines}


async def start_dev(root: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(DEV),
        cwd=root,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # a group of its own, as a terminal's job
    )


async def test_ctrl_c_while_the_services_start_stops_everything_quietly(
    servers: Servers, tmp_path: Path, dev_namespace: str
) -> None:
    """The services used to be in the runner's group: a Ctrl-C reached each of them mid-import
    (a KeyboardInterrupt traceback in every log) instead of the runner stopping them."""
    process = await start_dev(tmp_path, dev_env(servers, dev_namespace))
    try:
        started = tmp_path / ".data" / "logs" / f"{SERVICES[-1][0]}.log"
        for _ in range(600):
            if started.exists():
                break
            await asyncio.sleep(0.1)
        assert started.exists()
        await asyncio.sleep(1.5)  # the services are importing, starting their pools
        code, out = await ctrl_c(process)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert code == 0, out
    assert "stopping..." in out
    assert not noise(out), out
    assert logged_noise(tmp_path) == {}


async def test_ctrl_c_once_everything_is_ready_stops_everything_quietly(
    servers: Servers, tmp_path: Path, dev_namespace: str
) -> None:
    process = await start_dev(tmp_path, dev_env(servers, dev_namespace))
    try:
        assert process.stdout is not None
        seen = b""
        while b"darkroom is running" not in seen:
            line = await asyncio.wait_for(process.stdout.readline(), 180)
            assert line, seen.decode(errors="replace")
            seen += line
        await asyncio.sleep(2)
        code, out = await ctrl_c(process)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert code == 0, out
    assert not noise(out), out
    assert logged_noise(tmp_path) == {}


async def test_ctrl_c_while_the_drop_bucket_is_being_made_unwinds_the_s3_client(
    servers: Servers, tmp_path: Path, dev_namespace: str
) -> None:
    """Before the services start, the runner makes the import source's bucket with an S3 client:
    a Ctrl-C then must cancel that work, not raise inside the client's context."""
    with socket.socket() as hole:  # accepts connections, never answers: the request hangs
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        env = dev_env(
            servers, dev_namespace, S3_ENDPOINT_URL=f"http://127.0.0.1:{hole.getsockname()[1]}"
        )
        process = await start_dev(tmp_path, env)
        try:
            for _ in range(300):  # the runner has connected: it is in the S3 client now
                await asyncio.sleep(0.1)
                hole.settimeout(0)
                try:
                    conn, _ = hole.accept()
                    break
                except BlockingIOError:
                    continue
            else:
                pytest.fail("the runner never connected to S3")
            await asyncio.sleep(0.5)
            code, out = await ctrl_c(process)
            conn.close()
        finally:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert code == 0, out
    assert "stopping..." in out
    assert not noise(out), out

"""The whole system as processes (the four services on real RabbitMQ and the stand-ins)."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from darkroom_dev.servers import Server, free_port
from darkroom_dev.stack import SERVICES, start_services
from tests.factories.e2e import stack_queues
from tests.factories.servers import QueueJanitor, to_env


@pytest.fixture
def extra_env() -> dict[str, str]:
    """Settings a test module adds to the services' environment."""
    return {}


@pytest.fixture
async def system(
    settings_kwargs: dict[str, Any], janitor: QueueJanitor, extra_env: dict[str, str]
) -> AsyncIterator[tuple[str, dict[str, str], list[Server], Path]]:
    base = free_port(len(SERVICES))
    api_url = f"http://127.0.0.1:{base}"
    env = {
        **os.environ,
        **to_env(
            {
                k: v
                for k, v in settings_kwargs.items()
                if k not in ("s3_access_key", "s3_secret_key")
            }
        ),
        "S3_ACCESS_KEY": str(settings_kwargs["s3_access_key"]),
        "S3_SECRET_KEY": str(settings_kwargs["s3_secret_key"]),
        "PUBLIC_BASE_URL": api_url,
        "ALLOW_PRIVATE_NETWORKS": '["127.0.0.0/8"]',
        "RETRY_DELAYS_MS": "[2000, 3000]",
        "RENDER_PROCESSES": "1",
        "LOG_JSON": "true",
        **extra_env,
    }
    janitor.add(*stack_queues(settings_kwargs["amqp_namespace"], (2000, 3000)))
    logs = Path(tempfile.mkdtemp(prefix="darkroom-e2e-"))
    services = await asyncio.to_thread(start_services, env, logs, base)
    try:
        yield api_url, env, services, logs
    finally:
        for s in services:
            if s.process is not None and s.process.poll() is None:
                s.process.send_signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(_wait, s) for s in services]
        # A graceful stop: every service exits on its own after SIGTERM, with status 0.
        assert codes == [0, 0, 0, 0], (codes, logs)


def _wait(server: Server) -> int | None:
    assert server.process is not None
    try:
        return server.process.wait(30)
    except Exception:
        server.process.kill()
        return None

"""The fault suite's fixtures: its own stand-ins, and per case the whole stack as processes.

``FAULTS_FULL=1`` (``make test-faults``) runs every case with more load; without it the suite is
the bounded version that ``make test`` runs. The table of cases is printed at the end of the
session and written to ``.data/faults-report.json``.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from darkroom_ingest.cli import create_token
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.messaging import Topology
from darkroom_repair.app import queue_specs as repair_specs
from darkroom_thumbnailing.app import queue_spec as thumbnail_spec
from darkroom_thumbnailing.settings import ThumbnailSettings
from darkroom_webhooks.app import queue_specs
from darkroom_webhooks.settings import WebhookSettings
from pymongo import AsyncMongoClient

from darkroom_dev.servers import (
    Server,
    TcpProxy,
    ensure_rabbitmq,
    free_port,
    start_mongo_standin,
    start_s3_standin,
)
from darkroom_dev.stack import SERVICES
from tests.factories.servers import QueueJanitor
from tests.faults.harness import FULL, REPORT, Case, Receiver, Stack, Uploader

ROOT = Path(__file__).resolve().parents[2]
REPORT_PATH = ROOT / ".data" / "faults-report.json"
ENDPOINTS = ["a", "b"]
WEBHOOK_RETRY_MS = [2000, 5000, 10000, 20000, 30000, 60000]
THUMB_RETRY_MS = [1000, 3000, 10000, 30000]


@dataclass
class FaultServers:
    mongo: Server
    s3: Server
    amqp_url: str


@pytest.fixture(scope="session")
def fault_servers() -> Iterator[FaultServers]:
    """Stand-ins of the fault suite's own: a case freezes them (SIGSTOP), which must not touch
    the servers the rest of the test session uses."""
    tmp = Path(tempfile.mkdtemp(prefix="darkroom-faults-"))
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    ensure_rabbitmq(amqp_url)
    mongo = start_mongo_standin(tmp / "mongo", free_port(), tmp / "logs")
    try:
        s3 = start_s3_standin(free_port(), tmp / "logs")
    except BaseException:
        mongo.stop()
        raise
    try:
        yield FaultServers(mongo, s3, amqp_url)
    finally:
        for server in (s3, mongo):
            if server.process is not None:
                # Never leave a stand-in stopped by a case that failed half way.
                server.process.send_signal(18)  # SIGCONT
            server.stop()


def tuned(settings: dict[str, Any]) -> dict[str, str]:
    """Short intervals and delays for a test: retries, relays, reconciliation passes."""
    env = {
        "PUBLIC_BASE_URL": "",  # set per case
        "ALLOW_PRIVATE_NETWORKS": '["127.0.0.0/8"]',
        "LOG_JSON": "true",
        "LOG_LEVEL": "INFO",
        "RENDER_PROCESSES": "2",
        "PARSE_PROCESSES": "2",
        "OUTBOX_GRACE_MS": "2000",
        "OUTBOX_RELAY_INTERVAL_SECONDS": "0.5",
        "UPLOAD_CHUNK_BYTES": str(5 * 1024 * 1024),
        "UPLOAD_SWEEP_INTERVAL_SECONDS": "5",
        # The periodic orphan pass runs, but only on what is older than any request of a case:
        # the checker runs `darkroom orphans sweep --grace-seconds 0` once the load is over.
        "ORPHAN_SWEEP_INTERVAL_SECONDS": "10",
        "ORPHAN_GRACE_SECONDS": "300",
        # The receiver answers at once; a hung attempt is not what these cases are about.
        "TIMEOUT_SECONDS": "5",
        # photo_count follows the photos: expired reservations are recounted often here. The
        # reservation outlives any commit of a case (a 10 s MongoDB freeze included).
        "PHOTO_RESERVATION_TTL_SECONDS": "30",
        "PHOTO_COUNT_SETTLE_SECONDS": "2",
        "PHOTO_COUNT_INTERVAL_SECONDS": "2",
        "GAUGE_INTERVAL_SECONDS": "2",
        "SHUTDOWN_GRACE_SECONDS": "30",
        "READY_CHECK_TIMEOUT_SECONDS": "1",
        # Imports in small steps, so that a kill lands mid-walk; a dead holder's import is
        # taken over within a lease (LOCK_LEASE_SECONDS) and a claim pass.
        "IMPORT_BATCH_FILES": "4",
        "IMPORT_CONCURRENCY": "2",
        "IMPORT_CLAIM_INTERVAL_SECONDS": "0.5",
    }
    for key, value in settings.items():
        env[key.upper()] = (
            value.get_secret_value()
            if hasattr(value, "get_secret_value")
            else value
            if isinstance(value, str)
            else json.dumps(value)
        )
    return env


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[OUTCOME] = report.outcome
    return report


OUTCOME = pytest.StashKey[str]()


@pytest.fixture
async def case(request: pytest.FixtureRequest, fault_servers: FaultServers) -> AsyncIterator[Case]:
    started = time.monotonic()
    token_hex = secrets.token_hex(4)
    namespace = f"darkroom-faults.{token_hex}"
    settings: dict[str, Any] = {
        "mongo_url": fault_servers.mongo.url,
        "mongo_db": f"faults_{token_hex}",
        "amqp_url": fault_servers.amqp_url,
        "amqp_namespace": namespace,
        "s3_endpoint_url": fault_servers.s3.url,
        "s3_access_key": "darkroom",
        "s3_secret_key": "darkroom-secret",
        "s3_bucket": f"faults-{token_hex}",
        "s3_ignores_copy_conditions": True,  # the fault suite's own moto_server
        # An import source on the same S3 server (tests of a kill mid-import fill it).
        "import_sources": {"drop": {"bucket": f"faults-{token_hex}-drop"}},
    }
    cli_env = {**os.environ, **tuned(settings)}
    # Small batches: a repair of tens of photos lasts long enough to be killed mid-way.
    repair_env = {"BATCH_SIZE": "5", "CONCURRENCY": "2"}
    proxy: TcpProxy | None = None
    if request.node.get_closest_marker("amqp_proxy"):
        # The services reach the broker through a proxy the case can cut; the test's own
        # connections (janitor, taps) go direct.
        host_port = fault_servers.amqp_url.rsplit("@", 1)[1].split("/", 1)[0]
        host, port = host_port.split(":")
        proxy = TcpProxy(host, int(port), free_port())
        await proxy.start()
        settings["amqp_url"] = fault_servers.amqp_url.replace(host_port, proxy.url_netloc)
    s3_proxy: TcpProxy | None = None
    if request.node.get_closest_marker("s3_proxy"):
        # metadata-repair reaches S3 through a proxy the case can slow down; the others and the
        # test go direct.
        s3_parts = urlsplit(fault_servers.s3.url)
        s3_proxy = TcpProxy(s3_parts.hostname or "127.0.0.1", s3_parts.port or 80, free_port())
        await s3_proxy.start()
        repair_env["S3_ENDPOINT_URL"] = f"http://{s3_proxy.url_netloc}"
    base = free_port(len(SERVICES) + 1)
    env = {**os.environ, **tuned(settings)}
    env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{base}"
    env["RETRY_DELAYS_MS"] = json.dumps(WEBHOOK_RETRY_MS)
    logs = Path(tempfile.mkdtemp(prefix=f"darkroom-faults-{request.node.name[:40]}-"))
    # Each service reads RETRY_DELAYS_MS; thumbnailing's are shorter than the webhooks'.
    stack = Stack(
        env,
        logs,
        base,
        {
            "thumbnailing": {"RETRY_DELAYS_MS": json.dumps(THUMB_RETRY_MS)},
            "metadata-repair": repair_env,
        },
    )
    topology = Topology(namespace)
    janitor = QueueJanitor()
    janitor.namespaces.add(namespace)
    janitor.add(
        thumbnail_spec(topology, ThumbnailSettings(retry_delays_ms=tuple(THUMB_RETRY_MS))),
        *repair_specs(topology),
        *queue_specs(topology, WebhookSettings(retry_delays_ms=tuple(WEBHOOK_RETRY_MS))),
    )
    receiver = Receiver(ENDPOINTS)
    await receiver.start(base + len(SERVICES))
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(fault_servers.mongo.url)
    db = mongo[settings["mongo_db"]]
    http: aiohttp.ClientSession | None = None
    setup_s = stop_s = 0.0
    result: Case | None = None
    try:
        await stack.start()
        setup_s = time.monotonic() - started
        token = await create_token(
            IngestSettings(**settings),
            "faults",
            ["photos.read", "photos.write", "events.read", "events.write", "webhooks.manage"],
            None,
        )
        http = aiohttp.ClientSession(stack.api_url, headers={"Authorization": f"Bearer {token}"})
        for name in ENDPOINTS:
            async with http.post(
                "/v1/webhooks", json={"url": receiver.url(name), "event_types": ["photo.uploaded"]}
            ) as resp:
                assert resp.status == 201, await resp.text()
                body = await resp.json()
            receiver.endpoints[name].endpoint_id = body["id"]
            receiver.endpoints[name].secret = body["secret"]
        events = []
        for n in range(2):
            async with http.post(
                "/v1/events", json={"name": f"Faults {n}", "slug": f"faults-{n}"}
            ) as resp:
                assert resp.status == 201, await resp.text()
                events.append((await resp.json())["id"])
        result = Case(
            name=request.node.name,
            stack=stack,
            receiver=receiver,
            http=http,
            uploader=Uploader(http),
            db=db,
            events=events,
            cli_env=cli_env,
            topology=topology,
            amqp_url=fault_servers.amqp_url,
            mongo_process=fault_servers.mongo.process,
            s3_process=fault_servers.s3.process,
            proxy=proxy,
            s3_proxy=s3_proxy,
            s3_url=fault_servers.s3.url,
            import_bucket=settings["import_sources"]["drop"]["bucket"],
        )
        yield result
    finally:
        stopping = time.monotonic()
        if proxy is not None:
            await proxy.restore()
        left = await stack.stop_all()
        stop_s = time.monotonic() - stopping
        if http is not None:
            await http.close()
        await receiver.stop()
        await janitor.clean(fault_servers.amqp_url)
        for opened in (proxy, s3_proxy):
            if opened is not None:
                await opened.close()
        await mongo.drop_database(settings["mongo_db"])
        await mongo.close()
        if result is not None:
            if left:
                result.problems.append(f"processes left behind: {left}")
            outcome = request.node.stash.get(OUTCOME, "error")
            if outcome == "passed" and left:
                outcome = "failed"
            result.notes.append(
                f"harness: services up in {setup_s:.1f}s, stopped in {stop_s:.1f}s, "
                f"exit codes {stack.exit_codes}"
            )
            result.record(outcome, time.monotonic() - started)
        assert not left, f"processes left behind: {left}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORT:
        return
    REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
    REPORT_PATH.write_text(
        json.dumps({"full": FULL, "cases": REPORT}, indent=2, ensure_ascii=False) + "\n"
    )
    tr = terminalreporter
    tr.section("fault suite")
    head = ("case", "outcome", "accepted", "stored", "delivered", "dups", "orphans", "recovery")
    rows = [
        (
            r["case"].removeprefix("test_"),
            r["outcome"],
            str(r["uploads_accepted"]),
            str(r["photos_stored"]),
            str(r["deliveries_received"]),
            str(r["duplicate_deliveries"]),
            "-" if r["orphans_found"] is None else str(r["orphans_found"]),
            "-" if r["recovery_s"] is None else f"{r['recovery_s']}s",
        )
        for r in REPORT
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"
    tr.write_line(line)
    tr.write_line("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        tr.write_line(
            "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        )
    for r in REPORT:
        tr.write_line(f"{r['case']}: injected: {r['injected']}")
        for p in r["problems"]:
            tr.write_line(f"    problem: {p}")
        for n in r["notes"]:
            tr.write_line(f"    note: {n}")
    tr.write_line(f"fault report: {REPORT_PATH}")

"""The Operation lifecycle of the kit (darkroom_kit.operations): created queued with its command
in the same write, claimed, reported, ended once; read and waited for."""

from __future__ import annotations

import asyncio

import aio_pika
from darkroom_ingest.settings import IngestSettings
from darkroom_kit import outbox, records
from darkroom_kit.messaging import PUBLISHER, Envelope, QueueSpec, Topology, declare_consumer_queue
from darkroom_kit.metrics import OperationMetrics
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.operations import Operations, new_operation_id
from darkroom_kit.outbox import Outbox
from darkroom_kit.statuses import OperationState
from prometheus_client import CollectorRegistry

from tests.factories.api import Client
from tests.factories.messaging import drain
from tests.factories.servers import QueueJanitor


async def test_an_operation_from_creation_to_its_end(
    api: Client, ingest_settings: IngestSettings, janitor: QueueJanitor
) -> None:
    topology = Topology(ingest_settings.amqp_namespace)
    watch = QueueSpec(topology.queue("test", "commands"), topology.commands, ("#",), ())
    janitor.add(watch)
    connection = await aio_pika.connect(ingest_settings.amqp_url)
    try:
        await declare_consumer_queue(await connection.channel(), topology, watch, 5)
    finally:
        await connection.close()
    app = api.app
    operations = Operations(app[MONGO_DB])
    op_id = new_operation_id()
    command = Envelope.new(records.WEBHOOK_RECOVER, {"operation_id": op_id})
    created = await operations.create(
        op_id,
        "webhook_recover",
        command,
        exchange=topology.commands,
        outbox=Outbox(app[PUBLISHER], owner="upload-ingest"),
        grace_ms=10_000,
        params={"endpoint_id": "wh_1", "since_ms": 1, "until_ms": 2},
        progress={"resent": 0},
    )
    assert (created.id, created.state, created.final) == (op_id, OperationState.QUEUED, False)
    # Its command was stored with it and published; nothing is left in the outbox.
    [sent] = await drain(ingest_settings.amqp_url, watch.name, 1)
    assert sent["id"] == command.id
    doc = await app[MONGO_DB][records.OPERATIONS].find_one({"_id": op_id})
    assert doc is not None
    assert outbox.pending_of(doc, "upload-ingest") == {}
    read = await operations.get(op_id)
    assert read is not None
    assert read.params == {"endpoint_id": "wh_1", "since_ms": 1, "until_ms": 2}
    assert (await operations.wait(op_id, 0)) == read  # no wait: as it stands

    # A worker claims it, reports, dies, claims it again (a restart) and carries on.
    running = await operations.start(op_id, {"total": 3, "resent": 0})
    assert running is not None
    assert (running.state, running.progress) == (OperationState.RUNNING, {"total": 3, "resent": 0})
    await operations.report(op_id, {"total": 3, "resent": 2}, failures={"x": "y"}, cursor="c2")
    again = await operations.start(op_id)
    assert again is not None
    assert (again.progress, again.failures, again.cursor) == (
        {"total": 3, "resent": 2},
        {"x": "y"},
        "c2",
    )

    # Someone waits while it ends.
    waiting = asyncio.ensure_future(operations.wait(op_id, 30, interval=0.05))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await operations.finish(op_id, {"total": 3, "resent": 3}, {"total": 3, "resent": 3})
    done = await waiting
    assert done is not None
    assert (done.state, done.result, done.final) == (
        OperationState.DONE,
        {"total": 3, "resent": 3},
        True,
    )
    # Ended once: a late failure, a duplicate command's claim change nothing.
    await operations.fail(op_id, "too late")
    assert await operations.start(op_id) is None
    assert await operations.get(op_id) == done
    assert await operations.get("op_nope") is None
    assert await operations.wait("op_nope", 1) is None


async def test_a_failed_operation_keeps_what_it_did_and_why(api: Client) -> None:
    operations = Operations(api.app[MONGO_DB])
    op_id = new_operation_id()
    await api.app[MONGO_DB][records.OPERATIONS].insert_one(
        {"_id": op_id, "kind": "repair_dimensions", "state": "queued", "created_ms": 1}
    )
    assert await operations.start(op_id) is not None
    await operations.fail(op_id, "x" * 2000, {"scanned": 5})
    failed = await operations.get(op_id)
    assert failed is not None
    assert failed.state is OperationState.FAILED
    assert failed.result is not None
    assert failed.result["scanned"] == 5
    assert failed.result["error"] == "x" * 500  # cut
    await operations.finish(op_id, {"scanned": 9})  # it stays failed
    still = await operations.get(op_id)
    assert still is not None
    assert still.state is OperationState.FAILED


async def test_each_operation_that_ends_is_counted_once_by_kind_and_state(api: Client) -> None:
    registry = CollectorRegistry()
    operations = Operations(api.app[MONGO_DB], OperationMetrics(registry, "test"))
    col = api.app[MONGO_DB][records.OPERATIONS]
    done_id, failed_id = new_operation_id(), new_operation_id()
    await col.insert_one({"_id": done_id, "kind": "s3_import", "state": "queued", "created_ms": 1})
    await col.insert_one(
        {"_id": failed_id, "kind": "repair_dimensions", "state": "queued", "created_ms": 1}
    )

    def finished(kind: str, state: str) -> float | None:
        return registry.get_sample_value(
            "operations_finished_total", {"service": "test", "kind": kind, "state": state}
        )

    assert await operations.start(done_id) is not None
    await operations.finish(done_id, {"imported": 1})
    await operations.fail(failed_id, "it broke")  # ended before it ran: counted too
    # Ending again changes nothing, and counts nothing.
    await operations.fail(done_id, "too late")
    await operations.finish(failed_id, {})
    await operations.finish("op_nope", {})

    assert finished("s3_import", "done") == 1
    assert finished("repair_dimensions", "failed") == 1
    assert finished("s3_import", "failed") is None
    assert finished("repair_dimensions", "done") is None

"""metadata-repair: re-extracts missing dimensions and capture dates from stored files."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from darkroom_kit import records
from darkroom_kit.background import periodic_ctx
from darkroom_kit.httpapp import REGISTRY, create_base_app
from darkroom_kit.messaging import (
    PUBLISHER,
    TOPOLOGY,
    Envelope,
    QueueSpec,
    Topology,
    Typed,
    amqp_ctx,
    consumer_ctx,
    typed,
)
from darkroom_kit.metrics import ConsumerMetrics, OperationMetrics
from darkroom_kit.mongo import MONGO_DB, mongo_ctx
from darkroom_kit.outbox import RELAY_IDLE_FACTOR, Outbox, OutboxRelay
from darkroom_kit.pool import RENDER_POOL, pool_ctx
from darkroom_kit.readiness import readiness_ctx
from darkroom_kit.storage import OBJECT_STORE, object_store_ctx

from darkroom_repair.archives import Archiver
from darkroom_repair.deps import DEPS, Deps
from darkroom_repair.repair import Repairer
from darkroom_repair.settings import DEFAULT_RETRY_DELAYS_MS, RepairSettings

SERVICE = "metadata-repair"

REPAIRER: web.AppKey[Repairer] = web.AppKey("repairer", Repairer)
RELAY: web.AppKey[OutboxRelay] = web.AppKey("outbox_relay", OutboxRelay)
ARCHIVER: web.AppKey[Archiver] = web.AppKey("archiver", Archiver)


def queue_spec(
    topology: Topology, retry_delays_ms: tuple[int, ...] = DEFAULT_RETRY_DELAYS_MS
) -> QueueSpec:
    return QueueSpec(
        topology.queue(SERVICE, "requests"),
        topology.commands,
        (records.REPAIR_REQUESTED,),
        retry_delays_ms,
    )


def archive_queue_spec(
    topology: Topology, retry_delays_ms: tuple[int, ...] = DEFAULT_RETRY_DELAYS_MS
) -> QueueSpec:
    return QueueSpec(
        topology.queue(SERVICE, "archives"),
        topology.commands,
        (records.ARCHIVE_REQUESTED,),
        retry_delays_ms,
    )


def queue_specs(topology: Topology, settings: RepairSettings | None = None) -> list[QueueSpec]:
    """Every queue metadata-repair consumes (for tools that clean up after it)."""
    settings = settings or RepairSettings()
    return [
        queue_spec(topology, settings.repair_retry_delays_ms),
        archive_queue_spec(topology, settings.archive_retry_delays_ms),
    ]


def create_app(settings: RepairSettings) -> web.Application:
    app = create_base_app(SERVICE)
    metrics = ConsumerMetrics(app[REGISTRY], SERVICE)
    operation_metrics = OperationMetrics(app[REGISTRY], SERVICE)

    async def domain_ctx(app: web.Application) -> AsyncIterator[None]:
        outbox = Outbox(app[PUBLISHER], owner=SERVICE)
        # Its own messages only (photo.repaired, in upload-ingest's photos).
        relay = OutboxRelay(
            outbox, [app[MONGO_DB][records.PHOTOS]], exchanges=app[TOPOLOGY].published
        )
        await relay.ensure_indexes()
        app[RELAY] = relay
        deps = Deps(
            settings=settings,
            db=app[MONGO_DB],
            store=app[OBJECT_STORE],
            pool=app[RENDER_POOL],
            topology=app[TOPOLOGY],
            outbox=outbox,
            registry=app[REGISTRY],
            operation_metrics=operation_metrics,
        )
        app[DEPS] = deps
        app[REPAIRER] = Repairer(deps)
        app[ARCHIVER] = Archiver(deps)
        yield

    def handler(app: web.Application) -> Typed:
        return typed(app[REPAIRER].handle)

    def archive_handler(app: web.Application) -> Typed:
        return typed(app[ARCHIVER].handle)

    async def expire_archives(app: web.Application) -> int:
        return await app[ARCHIVER].expire()

    async def relay_pass(app: web.Application) -> int:
        return await app[RELAY].run_once()

    async def request_sweep(app: web.Application) -> None:
        # The sweep requests a repair like any client would, so replicas share the work through
        # the queue instead of each scanning on its own.
        await app[PUBLISHER].publish(
            app[TOPOLOGY].commands, Envelope.new(records.REPAIR_REQUESTED, {"sweep": True})
        )

    app.cleanup_ctx.extend(
        [
            mongo_ctx(settings),
            object_store_ctx(settings),
            amqp_ctx(settings, metrics),
            pool_ctx(settings.parse_processes),
            domain_ctx,
            consumer_ctx(
                settings, lambda t: queue_spec(t, settings.repair_retry_delays_ms), handler, metrics
            ),
            consumer_ctx(
                settings,
                lambda t: archive_queue_spec(t, settings.archive_retry_delays_ms),
                archive_handler,
                metrics,
            ),
            periodic_ctx(
                "expired archives deleted",
                expire_archives,
                settings.archive_expiry_interval_seconds,
            ),
            periodic_ctx(
                "outbox relay republished",
                relay_pass,
                settings.outbox_relay_interval_seconds,
                idle_factor=RELAY_IDLE_FACTOR,
            ),
            periodic_ctx(
                "repair sweep", request_sweep, settings.sweep_interval_seconds, wait_first=True
            ),
            readiness_ctx,
        ]
    )
    return app

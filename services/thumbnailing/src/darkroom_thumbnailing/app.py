"""thumbnailing: a worker that turns uploaded photos into thumbnail and hero variants."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from darkroom_kit import records
from darkroom_kit.background import periodic_ctx
from darkroom_kit.httpapp import REGISTRY, create_base_app
from darkroom_kit.messaging import (
    PUBLISHER,
    TOPOLOGY,
    QueueSpec,
    Topology,
    Typed,
    amqp_ctx,
    consumer_ctx,
    typed,
)
from darkroom_kit.metrics import ConsumerMetrics
from darkroom_kit.mongo import MONGO_DB, mongo_ctx
from darkroom_kit.outbox import RELAY_IDLE_FACTOR, Outbox, OutboxRelay
from darkroom_kit.pool import RENDER_POOL, pool_ctx
from darkroom_kit.readiness import readiness_ctx
from darkroom_kit.storage import OBJECT_STORE, object_store_ctx

from darkroom_thumbnailing.deps import DEPS, Deps
from darkroom_thumbnailing.metrics import ThumbnailMetrics
from darkroom_thumbnailing.service import Thumbnailer
from darkroom_thumbnailing.settings import ThumbnailSettings

SERVICE = "thumbnailing"

RELAY: web.AppKey[OutboxRelay] = web.AppKey("outbox_relay", OutboxRelay)


def queue_spec(topology: Topology, settings: ThumbnailSettings) -> QueueSpec:
    return QueueSpec(
        topology.queue(SERVICE, "photos"),
        topology.events,
        (records.PHOTO_UPLOADED,),
        settings.retry_delays_ms,
    )


def create_app(settings: ThumbnailSettings) -> web.Application:
    app = create_base_app(SERVICE)
    metrics = ConsumerMetrics(app[REGISTRY], SERVICE)
    thumbnail_metrics = ThumbnailMetrics(app[REGISTRY], SERVICE)

    async def domain_ctx(app: web.Application) -> AsyncIterator[None]:
        outbox = Outbox(app[PUBLISHER], owner=SERVICE)
        # Its own messages only (photo.processed, in upload-ingest's photos).
        relay = OutboxRelay(
            outbox, [app[MONGO_DB][records.PHOTOS]], exchanges=app[TOPOLOGY].published
        )
        await relay.ensure_indexes()
        app[RELAY] = relay
        app[DEPS] = Deps(
            settings=settings,
            db=app[MONGO_DB],
            store=app[OBJECT_STORE],
            pool=app[RENDER_POOL],
            topology=app[TOPOLOGY],
            outbox=outbox,
            metrics=thumbnail_metrics,
        )
        yield

    async def relay_pass(app: web.Application) -> int:
        return await app[RELAY].run_once()

    def handler(app: web.Application) -> Typed:
        return typed(Thumbnailer(app[DEPS]).handle)

    app.cleanup_ctx.extend(
        [
            mongo_ctx(settings),
            object_store_ctx(settings),
            amqp_ctx(settings, metrics),
            pool_ctx(settings.render_processes, settings.render_memory_mb * 2**20),
            domain_ctx,
            consumer_ctx(settings, lambda t: queue_spec(t, settings), handler, metrics),
            periodic_ctx(
                "outbox relay republished",
                relay_pass,
                settings.outbox_relay_interval_seconds,
                idle_factor=RELAY_IDLE_FACTOR,
            ),
            readiness_ctx,
        ]
    )
    return app

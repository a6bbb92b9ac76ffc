"""thumbnailing: a worker that turns uploaded photos into thumbnail and hero variants."""

from __future__ import annotations

from aiohttp import web
from darkroom_kit import records
from darkroom_kit.httpapp import REGISTRY, create_base_app
from darkroom_kit.messaging import (
    PUBLISHER,
    TOPOLOGY,
    Handler,
    QueueSpec,
    Topology,
    amqp_ctx,
    consumer_ctx,
)
from darkroom_kit.metrics import ConsumerMetrics
from darkroom_kit.mongo import MONGO_DB, mongo_ctx
from darkroom_kit.outbox import Outbox
from darkroom_kit.pool import RENDER_POOL, pool_ctx
from darkroom_kit.readiness import readiness_ctx
from darkroom_kit.storage import OBJECT_STORE, object_store_ctx

from darkroom_thumbnailing.render import RenderSpec
from darkroom_thumbnailing.service import Thumbnailer
from darkroom_thumbnailing.settings import ThumbnailSettings

SERVICE = "thumbnailing"


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

    def handler(app: web.Application) -> Handler:
        spec = RenderSpec(
            thumbnail_px=settings.thumbnail_px,
            hero_px=settings.hero_px,
            quality=settings.quality,
            format=settings.output_format,
            max_pixels=settings.max_pixels,
            fail_on=settings.decode_fail_on,
        )
        return Thumbnailer(
            app[MONGO_DB],
            app[OBJECT_STORE],
            app[RENDER_POOL],
            Outbox(app[PUBLISHER]),
            app[TOPOLOGY],
            spec,
            settings.public_base_url,
            settings.render_timeout_seconds,
            len(settings.retry_delays_ms),
        ).handle

    app.cleanup_ctx.extend(
        [
            mongo_ctx(settings),
            object_store_ctx(settings),
            amqp_ctx(settings, metrics),
            pool_ctx(settings.render_processes, settings.render_memory_mb * 2**20),
            consumer_ctx(settings, lambda t: queue_spec(t, settings), handler, metrics),
            readiness_ctx,
        ]
    )
    return app

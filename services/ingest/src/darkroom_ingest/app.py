"""upload-ingest: the public REST API and the outbox relay."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import aio_pika
from aiohttp import web
from darkroom_kit import records
from darkroom_kit.background import periodic_ctx
from darkroom_kit.httpapp import READY_OPTIONAL, REGISTRY, create_base_app
from darkroom_kit.messaging import (
    AMQP_CONNECTION,
    PUBLISHER,
    TOPOLOGY,
    Typed,
    amqp_ctx,
    consumer_ctx,
    typed,
)
from darkroom_kit.metrics import ConsumerMetrics, OperationMetrics
from darkroom_kit.mongo import MONGO_DB, mongo_ctx
from darkroom_kit.outbox import RELAY_IDLE_FACTOR, Outbox, OutboxRelay
from darkroom_kit.readiness import readiness_ctx
from darkroom_kit.storage import OBJECT_STORE, object_store_ctx
from prometheus_client import Counter

from darkroom_ingest.api import all_routes, llms
from darkroom_ingest.api.cors import enable_cors
from darkroom_ingest.api.declare import register
from darkroom_ingest.api.openapi import openapi_document
from darkroom_ingest.api.tus import TUS_DISCOVERY, tus_middleware
from darkroom_ingest.chunked import ChunkedUploads
from darkroom_ingest.counting import COUNT_CORRECTIONS, PhotoCounts
from darkroom_ingest.deliveries import Deliveries
from darkroom_ingest.deps import DEPS, Deps
from darkroom_ingest.direct.service import DirectUploads
from darkroom_ingest.endpoints import WebhookEndpoints
from darkroom_ingest.events import EventService
from darkroom_ingest.gallery import Gallery
from darkroom_ingest.guests import GuestLinks
from darkroom_ingest.idempotency import idempotency_middleware
from darkroom_ingest.import_notifications import PAYLOADS as NOTIFICATION_PAYLOADS
from darkroom_ingest.import_notifications import NotificationHandler, decode, queue_spec
from darkroom_ingest.imports import Importer, ImportMetrics, ImportSources
from darkroom_ingest.jobs import Jobs
from darkroom_ingest.orphans import orphan_sweeper_ctx, sweep_pass
from darkroom_ingest.photos import PhotoService
from darkroom_ingest.settings import IngestSettings
from darkroom_ingest.stores import ensure_indexes
from darkroom_ingest.tus import TusUploads
from darkroom_ingest.upload_metrics import UploadMetrics
from darkroom_ingest.web_support import SETTINGS

SERVICE = "upload-ingest"

RELAY: web.AppKey[OutboxRelay] = web.AppKey("outbox_relay", OutboxRelay)
UPLOAD_BYTES: web.AppKey[Counter] = web.AppKey("upload_bytes_counter", Counter)
IMPORT_METRICS: web.AppKey[ImportMetrics] = web.AppKey("import_metrics", ImportMetrics)
UPLOAD_METRICS: web.AppKey[UploadMetrics] = web.AppKey("upload_metrics", UploadMetrics)
OPERATION_METRICS: web.AppKey[OperationMetrics] = web.AppKey("operation_metrics", OperationMetrics)


async def _domain_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    db = app[MONGO_DB]
    await ensure_indexes(db)
    # upload-ingest's own outbox; its relay also publishes entries written before outboxes had
    # owners (it owns the collections they were written to).
    publisher_outbox = Outbox(app[PUBLISHER], owner=SERVICE)
    topology = app[TOPOLOGY]
    photos = PhotoService(
        db,
        app[OBJECT_STORE],
        publisher_outbox,
        topology,
        settings.public_base_url,
        settings.outbox_grace_ms,
        PhotoCounts(
            db,
            reservation_ttl_ms=int(settings.photo_reservation_ttl_seconds * 1000),
            settle_ms=int(settings.photo_count_settle_seconds * 1000),
            corrections=app[COUNT_CORRECTIONS],
        ),
    )
    chunked = ChunkedUploads(db, app[OBJECT_STORE], photos, settings, app[UPLOAD_METRICS])
    await chunked.ensure_indexes()
    events = EventService(db, publisher_outbox, topology, settings.outbox_grace_ms)
    exits = contextlib.AsyncExitStack()
    sources = await exits.enter_async_context(ImportSources(settings).opened())
    importer = Importer(
        db,
        app[OBJECT_STORE],
        photos,
        sources,
        settings,
        app[IMPORT_METRICS],
        uploads=app[UPLOAD_METRICS],
        operations=app[OPERATION_METRICS],
    )
    await importer.ensure_indexes()
    app[DEPS] = Deps(
        settings=settings,
        db=db,
        store=app[OBJECT_STORE],
        publisher=app[PUBLISHER],
        topology=topology,
        events=events,
        photos=photos,
        gallery=Gallery(photos, events.store),
        guests=GuestLinks(db),
        chunked=chunked,
        tus=TusUploads(chunked, app[OBJECT_STORE], settings),
        direct=DirectUploads(chunked, settings),
        endpoints=WebhookEndpoints(db),
        deliveries=Deliveries(
            db,
            app[PUBLISHER],
            topology,
            test_wait_seconds=settings.webhook_test_wait_seconds,
            resend_wait_seconds=settings.webhook_resend_wait_seconds,
        ),
        jobs=Jobs(db, publisher_outbox, topology, events, settings.outbox_grace_ms),
        upload_bytes=app[UPLOAD_BYTES],
        uploads=app[UPLOAD_METRICS],
        imports=importer,
        links=settings.media_links(settings.public_base_url),
    )
    relay = OutboxRelay(
        publisher_outbox,
        [db[records.PHOTOS], db[records.EVENTS], db[records.OPERATIONS]],
        after_flush={records.PHOTOS: photos.finish_deletion},
        adopt_unowned=True,
        exchanges=topology.published,
    )
    await relay.ensure_indexes()
    app[RELAY] = relay
    async with exits:
        try:
            yield
        finally:
            # Imports in progress give their leases back: another replica resumes them at once.
            await importer.close()


def _notification_ctxs(
    settings: IngestSettings, metrics: ConsumerMetrics
) -> list[Callable[[web.Application], AsyncIterator[None]]]:
    """The consumer of bucket notifications (import_notifications.py), when it is on."""
    if not settings.import_notifications:
        return []

    async def exchange_ctx(app: web.Application) -> AsyncIterator[None]:
        # The storage server declares it too, when it first publishes; the same arguments as
        # MinIO's (durable, not auto-deleted, not internal), or one of the two declares fails.
        channel = await app[AMQP_CONNECTION].channel()
        try:
            await channel.declare_exchange(
                settings.import_notify_exchange,
                aio_pika.ExchangeType(settings.import_notify_exchange_type),
                durable=True,
            )
        finally:
            await channel.close()
        yield

    def handler(app: web.Application) -> Typed:
        return typed(NotificationHandler(app[DEPS].imports, app[IMPORT_METRICS]).handle)

    return [
        exchange_ctx,
        consumer_ctx(
            settings,
            lambda topology: queue_spec(topology, settings, SERVICE),
            handler,
            metrics,
            payloads=NOTIFICATION_PAYLOADS,
            decode=decode,
        ),
    ]


async def _relay_pass(app: web.Application) -> int:
    return await app[RELAY].run_once()


async def _count_pass(app: web.Application) -> int:
    return await app[DEPS].photos.counts.run_pass()


async def _import_pass(app: web.Application) -> int:
    return await app[DEPS].imports.claim_pass()


async def _expire_pass(app: web.Application) -> int:
    return await app[DEPS].chunked.expire_due()


def create_app(settings: IngestSettings) -> web.Application:
    # The batch route streams its body itself; client_max_size only bounds bodies read whole.
    app = create_base_app(
        SERVICE,
        client_max_size=settings.max_json_bytes,
        middlewares=(idempotency_middleware, tus_middleware),
    )
    app[SETTINGS] = settings
    # Every message upload-ingest publishes is written to an outbox with its record first, so
    # it takes uploads while the broker is away (the relay publishes them after): a broker
    # outage is reported in /readyz, but does not take every replica out of the load balancer.
    app[READY_OPTIONAL] = frozenset({"amqp"})
    registry = app[REGISTRY]
    app[UPLOAD_BYTES] = Counter(
        "upload_bytes_total", "Bytes received in uploads", registry=registry
    )
    app[COUNT_CORRECTIONS] = Counter(
        "photo_count_corrections_total",
        "Events whose photo_count a reconciliation corrected",
        registry=registry,
    )
    app[IMPORT_METRICS] = ImportMetrics.registered(registry)
    app[UPLOAD_METRICS] = UploadMetrics(registry, SERVICE)
    app[OPERATION_METRICS] = OperationMetrics(registry, SERVICE)
    metrics = ConsumerMetrics(registry, SERVICE)
    app.cleanup_ctx.extend(
        [
            mongo_ctx(settings),
            object_store_ctx(settings, create_bucket=True),
            amqp_ctx(settings, metrics),
            _domain_ctx,
            # Bucket notifications wake watching imports (off unless IMPORT_NOTIFICATIONS).
            *_notification_ctxs(settings, metrics),
            readiness_ctx,
            periodic_ctx(
                "outbox relay republished",
                _relay_pass,
                settings.outbox_relay_interval_seconds,
                idle_factor=RELAY_IDLE_FACTOR,
            ),
            periodic_ctx(
                "abandoned uploads expired", _expire_pass, settings.upload_sweep_interval_seconds
            ),
            periodic_ctx(
                "photo counts corrected", _count_pass, settings.photo_count_interval_seconds
            ),
            # Imports whose process died (or that their replica could not start) resume here.
            periodic_ctx(
                "imports taken over", _import_pass, settings.import_claim_interval_seconds
            ),
            orphan_sweeper_ctx,
            # The first pass an interval after start: a crash loop must not list the bucket on
            # every start (`darkroom orphans sweep` runs one at once).
            periodic_ctx(
                "orphan sweep", sweep_pass, settings.orphan_sweep_interval_seconds, wait_first=True
            ),
        ]
    )
    routes = all_routes()
    # tus discovery (OPTIONS) is answered by the tus middleware: the router's OPTIONS of a
    # resource belongs to the CORS preflight.
    register(app, [r for r in routes if r.method != "OPTIONS"])
    enable_cors(app, settings.cors_allowed_origins)
    app[TUS_DISCOVERY] = next(r for r in routes if r.method == "OPTIONS").aiohttp_handler()
    document = openapi_document(routes, settings.public_base_url)

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_get("/openapi.json", openapi)
    app.router.add_routes(llms.routes)
    return app

"""webhook-dispatch: fans public events out to subscribed endpoints and delivers them, signed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from darkroom_kit import records
from darkroom_kit.background import periodic_ctx
from darkroom_kit.httpapp import REGISTRY, create_base_app
from darkroom_kit.messaging import (
    AMQP_CONNECTION,
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
from darkroom_kit.readiness import readiness_ctx

from darkroom_webhooks import housekeeping
from darkroom_webhooks.delivery import Dispatcher, Sender, WebhookMetrics, close_quietly
from darkroom_webhooks.housekeeping import WaitingGauges
from darkroom_webhooks.limits import EndpointGate, PlacesCollector
from darkroom_webhooks.recover import Recoverer
from darkroom_webhooks.settings import WebhookSettings
from darkroom_webhooks.ssrf import GuardedResolver, parse_networks

SERVICE = "webhook-dispatch"

DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("dispatcher", Dispatcher)
GATE: web.AppKey[EndpointGate] = web.AppKey("gate", EndpointGate)
RECOVERER: web.AppKey[Recoverer] = web.AppKey("recoverer", Recoverer)
# A limited attempt waits in one of these (escalating for a busy endpoint), uncounted.
DEFER_DELAYS_MS = (250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000)
RECOVER_RETRY_DELAYS_MS = (5_000, 60_000, 600_000)


def fanout_spec(topology: Topology) -> QueueSpec:
    return QueueSpec(
        topology.queue(SERVICE, "events"),
        topology.events,
        records.PUBLIC_EVENT_TYPES,
        (1_000, 10_000, 60_000, 300_000),
    )


def attempts_spec(topology: Topology, settings: WebhookSettings) -> QueueSpec:
    return QueueSpec(
        topology.queue(SERVICE, "attempts"),
        topology.commands,
        (records.WEBHOOK_ATTEMPT,),
        settings.retry_delays_ms,
        jitter=settings.retry_jitter,
        defer_delays_ms=DEFER_DELAYS_MS,
    )


def recover_spec(topology: Topology) -> QueueSpec:
    return QueueSpec(
        topology.queue(SERVICE, "recover"),
        topology.commands,
        (records.WEBHOOK_RECOVER,),
        RECOVER_RETRY_DELAYS_MS,
    )


def queue_specs(topology: Topology, settings: WebhookSettings) -> list[QueueSpec]:
    """Every queue webhook-dispatch consumes (for tools that must clean up after it)."""
    return [fanout_spec(topology), attempts_spec(topology, settings), recover_spec(topology)]


def create_app(settings: WebhookSettings) -> web.Application:
    app = create_base_app(SERVICE)
    registry = app[REGISTRY]
    metrics = ConsumerMetrics(registry, SERVICE)
    webhook_metrics = WebhookMetrics(registry)

    async def dispatcher_ctx(app: web.Application) -> AsyncIterator[None]:
        allowed = parse_networks(settings.allow_private_networks)
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(allowed),
            limit=settings.max_connections,
            # No cap per host: the replica cap bounds each endpoint, and several endpoints on one
            # host (one receiver, many endpoints) must not queue behind each other's slow ones.
            limit_per_host=0,
            ttl_dns_cache=30,
        )
        session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        timeout = aiohttp.ClientTimeout(
            total=settings.timeout_seconds, connect=settings.connect_timeout_seconds
        )
        sender = Sender(session, allowed, settings.response_body_limit, timeout)
        lease_ms = int(settings.delivery_lease_seconds * 1000)
        db = app[MONGO_DB]
        gate = EndpointGate(db, settings.endpoint_replica_concurrency, lease_ms)
        await gate.ensure_indexes()
        await housekeeping.ensure_indexes(db)
        app[GATE] = gate
        app[RECOVERER] = Recoverer(
            db, app[PUBLISHER], app[TOPOLOGY], retries=len(RECOVER_RETRY_DELAYS_MS)
        )
        app[DISPATCHER] = Dispatcher(
            app[MONGO_DB],
            app[PUBLISHER],
            app[TOPOLOGY],
            sender,
            attempts_spec(app[TOPOLOGY], settings),
            lease_ms,
            webhook_metrics,
            gate,
            auto_disable_ms=int(settings.auto_disable_after_hours * 3600 * 1000),
        )

        places = PlacesCollector(gate)
        registry.register(places)
        try:
            yield
        finally:
            registry.unregister(places)
            await close_quietly(session)

    def fan_out(app: web.Application) -> Handler:
        return app[DISPATCHER].fan_out

    def attempt(app: web.Application) -> Handler:
        return app[DISPATCHER].attempt

    def recover(app: web.Application) -> Handler:
        return app[RECOVERER].handle

    gauges = WaitingGauges(registry)

    async def measure(app: web.Application) -> None:
        spec = attempts_spec(app[TOPOLOGY], settings)
        await gauges.measure(app[AMQP_CONNECTION], spec, app[MONGO_DB])

    async def prune(app: web.Application) -> int:
        retention_ms = int(settings.retention_days * 86_400_000)
        return await housekeeping.prune(app[MONGO_DB], app[GATE], retention_ms)

    app.cleanup_ctx.extend(
        [
            mongo_ctx(settings),
            amqp_ctx(settings, metrics),
            dispatcher_ctx,
            readiness_ctx,
            consumer_ctx(settings, lambda t: attempts_spec(t, settings), attempt, metrics),
            consumer_ctx(settings, fanout_spec, fan_out, metrics),
            consumer_ctx(settings, recover_spec, recover, metrics),
            periodic_ctx("webhook gauges", measure, settings.gauge_interval_seconds),
            periodic_ctx("webhook log pruning", prune, settings.prune_interval_seconds),
        ]
    )
    return app

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
from darkroom_kit.readiness import readiness_ctx
from darkroom_kit.tracing import url_without_secrets
from opentelemetry.instrumentation.aiohttp_client import create_trace_config

from darkroom_webhooks import housekeeping
from darkroom_webhooks.delivery import Dispatcher, Sender, WebhookMetrics, close_quietly
from darkroom_webhooks.deps import DEPS, Deps
from darkroom_webhooks.housekeeping import WaitingGauges
from darkroom_webhooks.limits import EndpointGate, PlacesCollector
from darkroom_webhooks.recover import Recoverer
from darkroom_webhooks.settings import WebhookSettings
from darkroom_webhooks.ssrf import GuardedResolver, parse_networks

SERVICE = "webhook-dispatch"

DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("dispatcher", Dispatcher)
GATE: web.AppKey[EndpointGate] = web.AppKey("gate", EndpointGate)
RECOVERER: web.AppKey[Recoverer] = web.AppKey("recoverer", Recoverer)
RELAY: web.AppKey[OutboxRelay] = web.AppKey("outbox_relay", OutboxRelay)

# The commands that make attempts, all on one queue: a resend's or a test's own retries are the
# attempt retries of its delivery (the same schedule, tiers and defer queues).
ATTEMPT_COMMANDS = (records.WEBHOOK_ATTEMPT, records.WEBHOOK_RESEND, records.WEBHOOK_SEND_TEST)


def fanout_spec(topology: Topology, settings: WebhookSettings | None = None) -> QueueSpec:
    delays = (settings or _DEFAULTS).fanout_retry_delays_ms
    return QueueSpec(
        topology.queue(SERVICE, "events"), topology.events, records.PUBLIC_EVENT_TYPES, delays
    )


def attempts_spec(topology: Topology, settings: WebhookSettings) -> QueueSpec:
    return QueueSpec(
        topology.queue(SERVICE, "attempts"),
        topology.commands,
        ATTEMPT_COMMANDS,
        settings.retry_delays_ms,
        jitter=settings.retry_jitter,
        defer_delays_ms=settings.defer_delays_ms,
    )


def recover_spec(topology: Topology, settings: WebhookSettings | None = None) -> QueueSpec:
    return QueueSpec(
        topology.queue(SERVICE, "recover"),
        topology.commands,
        (records.WEBHOOK_RECOVER,),
        (settings or _DEFAULTS).recover_retry_delays_ms,
    )


def queue_specs(topology: Topology, settings: WebhookSettings) -> list[QueueSpec]:
    """Every queue webhook-dispatch consumes (for tools that must clean up after it)."""
    return [
        fanout_spec(topology, settings),
        attempts_spec(topology, settings),
        recover_spec(topology, settings),
    ]


# The defaults, for callers that name a queue without settings (tools, benchmarks). Built
# without reading the environment.
_DEFAULTS = WebhookSettings.model_construct()


def create_app(settings: WebhookSettings) -> web.Application:
    app = create_base_app(SERVICE)
    registry = app[REGISTRY]
    metrics = ConsumerMetrics(registry, SERVICE)
    webhook_metrics = WebhookMetrics(registry)
    operation_metrics = OperationMetrics(registry, SERVICE)

    async def domain_ctx(app: web.Application) -> AsyncIterator[None]:
        db = app[MONGO_DB]
        lease_ms = int(settings.delivery_lease_seconds * 1000)
        gate = EndpointGate(db, settings.endpoint_replica_concurrency, lease_ms)
        await gate.ensure_indexes()
        await housekeeping.ensure_indexes(db)
        outbox = Outbox(app[PUBLISHER], owner=SERVICE)
        relay = OutboxRelay(
            outbox, [db[records.WEBHOOK_ENDPOINTS]], exchanges=app[TOPOLOGY].published
        )
        await relay.ensure_indexes()
        app[RELAY] = relay
        # The HTTP session after everything that awaits (and may fail), so the block below that
        # closes it is always reached.
        allowed = parse_networks(settings.allow_private_networks)
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(allowed),
            limit=settings.max_connections,
            # No cap per host: the replica cap bounds each endpoint, and several endpoints on one
            # host (one receiver, many endpoints) must not queue behind each other's slow ones.
            limit_per_host=0,
            ttl_dns_cache=30,
        )
        # Each attempt is a client span of its delivery's trace, and carries ``traceparent``.
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            trace_configs=[create_trace_config(url_filter=url_without_secrets)],
        )
        timeout = aiohttp.ClientTimeout(
            total=settings.timeout_seconds, connect=settings.connect_timeout_seconds
        )
        deps = Deps(
            settings=settings,
            db=db,
            publisher=app[PUBLISHER],
            topology=app[TOPOLOGY],
            outbox=outbox,
            sender=Sender(session, allowed, settings.response_body_limit, timeout),
            gate=gate,
            metrics=webhook_metrics,
            operation_metrics=operation_metrics,
            lease_ms=lease_ms,
            links=settings.media_links(settings.public_base_url),
        )
        app[DEPS] = deps
        app[GATE] = gate
        app[RECOVERER] = Recoverer(deps)
        app[DISPATCHER] = Dispatcher(deps, attempts_spec(deps.topology, settings))

        places = PlacesCollector(gate)
        registry.register(places)
        try:
            yield
        finally:
            registry.unregister(places)
            await close_quietly(session)

    def fan_out(app: web.Application) -> Typed:
        return typed(app[DISPATCHER].fan_out)

    def command(app: web.Application) -> Typed:
        return typed(app[DISPATCHER].command)

    def recover(app: web.Application) -> Typed:
        return typed(app[RECOVERER].handle)

    gauges = WaitingGauges(registry)

    async def measure(app: web.Application) -> None:
        spec = attempts_spec(app[TOPOLOGY], settings)
        await gauges.measure(app[AMQP_CONNECTION], spec, app[MONGO_DB])

    async def prune(app: web.Application) -> int:
        retention_ms = int(settings.retention_days * 86_400_000)
        return await housekeeping.prune(app[MONGO_DB], app[GATE], retention_ms)

    async def relay(app: web.Application) -> int:
        return await app[RELAY].run_once()

    app.cleanup_ctx.extend(
        [
            mongo_ctx(settings),
            amqp_ctx(settings, metrics),
            domain_ctx,
            readiness_ctx,
            consumer_ctx(settings, lambda t: attempts_spec(t, settings), command, metrics),
            consumer_ctx(settings, lambda t: fanout_spec(t, settings), fan_out, metrics),
            consumer_ctx(settings, lambda t: recover_spec(t, settings), recover, metrics),
            periodic_ctx(
                "outbox relay republished",
                relay,
                settings.outbox_relay_interval_seconds,
                idle_factor=RELAY_IDLE_FACTOR,
            ),
            periodic_ctx("webhook gauges", measure, settings.gauge_interval_seconds),
            periodic_ctx("webhook log pruning", prune, settings.prune_interval_seconds),
        ]
    )
    return app

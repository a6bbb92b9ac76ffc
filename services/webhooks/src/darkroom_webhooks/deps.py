"""What webhook-dispatch's parts share, built once at start-up (``app.create_app``'s domain
context) and handed to each of them: one object instead of constructors with a dozen
arguments. Each part reads what it needs into its own attributes when it is made, so the
paths run per message pay nothing for it."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from darkroom_kit.links import MediaLinks
from darkroom_kit.messaging import Publisher, Topology
from darkroom_kit.metrics import OperationMetrics
from darkroom_kit.mongo import Database
from darkroom_kit.outbox import Outbox

from darkroom_webhooks.delivery import Sender, WebhookMetrics
from darkroom_webhooks.limits import EndpointGate
from darkroom_webhooks.settings import WebhookSettings


@dataclass(frozen=True, slots=True)
class Deps:
    settings: WebhookSettings
    db: Database
    publisher: Publisher
    topology: Topology
    # webhook-dispatch's own outbox (endpoint notices, written with the health change).
    outbox: Outbox
    sender: Sender
    gate: EndpointGate
    metrics: WebhookMetrics
    operation_metrics: OperationMetrics
    # The lease of a delivery and of an endpoint slot (the gate's and the dispatcher's).
    lease_ms: int
    # Signs the media links of webhook payloads.
    links: MediaLinks


DEPS: web.AppKey[Deps] = web.AppKey("deps", Deps)

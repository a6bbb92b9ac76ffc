"""The public REST API: one module per resource, each declaring its routes beside its handlers
(see ``declare``); the OpenAPI document is generated from the same declarations (``openapi``)."""

from __future__ import annotations

from darkroom_ingest.api import (
    archives,
    deliveries,
    direct,
    events,
    guests,
    imports,
    me,
    operations,
    photos,
    serving,
    tus,
    uploads,
    webhooks,
)
from darkroom_ingest.api.declare import Route

RESOURCES = (
    me,
    events,
    guests,
    photos,
    uploads,
    tus,
    direct,
    imports,
    serving,
    webhooks,
    deliveries,
    operations,
    archives,
)


def all_routes() -> list[Route]:
    return [route for module in RESOURCES for route in module.routes.routes]

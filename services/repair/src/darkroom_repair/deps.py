"""What metadata-repair's parts share, built once at start-up (``app.create_app``'s domain
context): one object instead of constructors with a dozen arguments. The repairer reads what
it needs into its own attributes when it is made."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from darkroom_kit.messaging import Topology
from darkroom_kit.metrics import OperationMetrics
from darkroom_kit.mongo import Database
from darkroom_kit.outbox import Outbox
from darkroom_kit.pool import RenderPool
from darkroom_kit.storage import S3ObjectStore
from prometheus_client import CollectorRegistry

from darkroom_repair.settings import RepairSettings


@dataclass(frozen=True, slots=True)
class Deps:
    settings: RepairSettings
    db: Database
    store: S3ObjectStore
    # Parses the heads of images (a process per core).
    pool: RenderPool
    topology: Topology
    # metadata-repair's own outbox (photo.repaired, written with the photo).
    outbox: Outbox
    registry: CollectorRegistry
    # Counts the repair Operations that end here (on ``registry``).
    operation_metrics: OperationMetrics


DEPS: web.AppKey[Deps] = web.AppKey("deps", Deps)

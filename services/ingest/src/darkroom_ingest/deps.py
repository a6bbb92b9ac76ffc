"""Everything a request may use, built once at start-up (``app._domain_ctx``) and handed to each
handler with its call: one object instead of constructors with a dozen arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from darkroom_kit.links import MediaLinks
from darkroom_kit.messaging import Publisher, Topology
from darkroom_kit.mongo import Database
from darkroom_kit.storage import S3ObjectStore
from darkroom_kit.stored.photos import PhotoRecord
from darkroom_kit.views import PhotoView, linked
from prometheus_client import Counter

from darkroom_ingest.settings import IngestSettings

if TYPE_CHECKING:
    from darkroom_ingest.chunked import ChunkedUploads
    from darkroom_ingest.deliveries import Deliveries
    from darkroom_ingest.direct.service import DirectUploads
    from darkroom_ingest.endpoints import WebhookEndpoints
    from darkroom_ingest.events import EventService
    from darkroom_ingest.gallery import Gallery
    from darkroom_ingest.guests import GuestLinks
    from darkroom_ingest.imports import Importer
    from darkroom_ingest.jobs import Jobs
    from darkroom_ingest.photos import PhotoService
    from darkroom_ingest.tokens import Principal
    from darkroom_ingest.tus import TusUploads
    from darkroom_ingest.upload_metrics import UploadMetrics


@dataclass(frozen=True, slots=True)
class Deps:
    settings: IngestSettings
    db: Database
    store: S3ObjectStore
    publisher: Publisher
    topology: Topology
    events: EventService
    photos: PhotoService
    gallery: Gallery
    guests: GuestLinks
    chunked: ChunkedUploads
    tus: TusUploads
    direct: DirectUploads
    endpoints: WebhookEndpoints
    deliveries: Deliveries
    jobs: Jobs
    upload_bytes: Counter
    uploads: UploadMetrics  # uploads_total: each file accepted or refused
    imports: Importer
    links: MediaLinks

    @property
    def base_url(self) -> str:
        return self.settings.public_base_url

    def photo_view(self, photo: PhotoRecord, principal: Principal) -> PhotoView:
        """The photo as an answer to ``principal`` shows it, with signed links. Links for a
        caller who may see hidden photos keep working while the photo is hidden; a gallery
        token's stop when it is hidden."""
        urls = self.links.urls(
            linked(photo), self.settings.media_link_seconds, hidden_ok=principal.event_id is None
        )
        return PhotoView.of(photo, self.base_url, urls)


DEPS: web.AppKey[Deps] = web.AppKey("deps", Deps)

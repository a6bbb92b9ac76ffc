"""What thumbnailing's parts share, built once at start-up (``app.create_app``'s domain
context): one object instead of constructors with a dozen arguments. The thumbnailer reads
what it needs into its own attributes when it is made, so the path run per photo pays nothing
for it."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from darkroom_kit.messaging import Topology
from darkroom_kit.mongo import Database
from darkroom_kit.outbox import Outbox
from darkroom_kit.pool import RenderPool
from darkroom_kit.storage import S3ObjectStore

from darkroom_thumbnailing.metrics import ThumbnailMetrics
from darkroom_thumbnailing.render import RenderSpec
from darkroom_thumbnailing.settings import ThumbnailSettings


@dataclass(frozen=True, slots=True)
class Deps:
    settings: ThumbnailSettings
    db: Database
    store: S3ObjectStore
    # The rendering processes (bounded in time and memory).
    pool: RenderPool
    topology: Topology
    # thumbnailing's own outbox (photo.processed, written with the photo).
    outbox: Outbox
    # Photos rendered and refused (thumbnails_total).
    metrics: ThumbnailMetrics

    @property
    def render_spec(self) -> RenderSpec:
        """The render options of the settings (sent with every render job)."""
        settings = self.settings
        return RenderSpec(
            thumbnail_px=settings.thumbnail_px,
            hero_px=settings.hero_px,
            quality=settings.quality,
            format=settings.output_format,
            max_pixels=settings.max_pixels,
            fail_on=settings.decode_fail_on,
        )


DEPS: web.AppKey[Deps] = web.AppKey("deps", Deps)

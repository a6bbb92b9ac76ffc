from __future__ import annotations

import os

from darkroom_kit.settings import CommonSettings
from pydantic import Field


class ThumbnailSettings(CommonSettings):
    http_port: int = 8081
    thumbnail_px: int = Field(default=400, ge=16, le=4000)
    hero_px: int = Field(default=1600, ge=16, le=8000)
    quality: int = Field(default=82, ge=1, le=100)
    output_format: str = Field(default="jpeg", pattern="^(jpeg|webp)$")
    max_pixels: int = Field(default=50_000_000, ge=1)
    decode_fail_on: str = Field(default="error", pattern="^(error|warning|truncated)$")
    # A render past this is killed with its worker process (and the photo marked failed).
    render_timeout_seconds: float = Field(default=60.0, gt=0)
    # Address-space bound of each rendering process; a 50 MP PNG needs about 1 GiB.
    render_memory_mb: int = Field(default=2048, ge=256)
    # One rendering process per core; each runs one libvips thread.
    render_processes: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    retry_delays_ms: tuple[int, ...] = (2_000, 15_000, 60_000, 300_000)
    # photo.processed is written with the photo (the outbox); what a writer left unpublished
    # this long is published by the relay, which looks every interval.
    outbox_grace_ms: int = Field(default=10_000, ge=0)
    outbox_relay_interval_seconds: float = Field(default=2.0, ge=0)
    # Originals larger than this are written to a temporary file (read from there by libvips)
    # rather than held in this process and sent whole to a rendering process.
    in_memory_original_bytes: int = Field(default=8 * 1024 * 1024, ge=0)
    # Enough messages in hand to keep every rendering process busy while the next file downloads.
    prefetch: int = 8

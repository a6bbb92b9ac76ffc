from __future__ import annotations

import os

from darkroom_kit.settings import CommonSettings
from pydantic import Field


class RepairSettings(CommonSettings):
    http_port: int = 8082
    # Bytes read from the head of each stored file; more only when the format needs it.
    head_bytes: int = Field(default=256 * 1024, ge=1024)
    max_pixels: int = Field(default=50_000_000, ge=1)
    batch_size: int = Field(default=200, ge=1, le=5000)
    concurrency: int = Field(default=32, ge=1, le=256)
    # Run a repair of every event on this period; 0 (the default) turns the sweep off.
    sweep_interval_seconds: float = Field(default=0.0, ge=0)
    # Header parsing is a millisecond or two per file: one process per core is plenty.
    parse_processes: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    prefetch: int = 2

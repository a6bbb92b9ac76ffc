from __future__ import annotations

import os

from darkroom_kit.settings import CommonSettings
from pydantic import Field

DEFAULT_RETRY_DELAYS_MS = (5_000, 60_000, 600_000)


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
    # Retries of a repair that failed (storage or MongoDB away); after the last one its
    # Operation is failed.
    repair_retry_delays_ms: tuple[int, ...] = DEFAULT_RETRY_DELAYS_MS
    # photo.repaired is written with the photo (the outbox); what a writer left unpublished
    # this long is published by the relay, which looks every interval.
    outbox_grace_ms: int = Field(default=10_000, ge=0)
    outbox_relay_interval_seconds: float = Field(default=2.0, ge=0)
    # Event archives (archives.py): how long a made archive is kept (and its link works), the
    # size of the parts it goes up in, the retries of a failed one (then its Operation is
    # failed), how often expired ones are deleted.
    archive_ttl_seconds: float = Field(default=24 * 3600, gt=0)
    archive_part_bytes: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)
    archive_retry_delays_ms: tuple[int, ...] = DEFAULT_RETRY_DELAYS_MS
    archive_expiry_interval_seconds: float = Field(default=300.0, ge=0)  # 0: off
    # The lease a worker holds on an archive while it writes it (renewed every third): a dead
    # worker's archive is taken over this long after, at the latest.
    archive_lease_seconds: float = Field(default=10.0, ge=0.3)

from __future__ import annotations

from darkroom_kit.settings import CommonSettings, MediaLinkSettings
from pydantic import Field

MINUTE = 60_000
HOUR = 60 * MINUTE


class WebhookSettings(CommonSettings, MediaLinkSettings):
    http_port: int = 8083
    # Delay before each retry (the first attempt is immediate): 5 s, 5 min, 30 min, 2 h, 5 h,
    # 10 h, 10 h. Each delay is one RabbitMQ retry-tier queue.
    retry_delays_ms: tuple[int, ...] = (
        5_000,
        5 * MINUTE,
        30 * MINUTE,
        2 * HOUR,
        5 * HOUR,
        10 * HOUR,
        10 * HOUR,
    )
    # Each retry waits its delay * (1 +- this), so one burst of failures does not return at once.
    retry_jitter: float = Field(default=0.2, ge=0, lt=1)
    # An endpoint with nothing but failures for this long is disabled (Svix: 5 days).
    auto_disable_after_hours: float = Field(default=120.0, gt=0)
    timeout_seconds: float = Field(default=15.0, gt=0)
    # A delivery (and an endpoint's concurrency slot) is leased by the dispatcher attempting it,
    # and the lease is renewed every third of this while the request runs: a dispatcher that
    # dies mid-attempt holds it this long at most. Long against the clock skew between
    # replicas and a stalled event loop; it need not outlast a request.
    delivery_lease_seconds: float = Field(default=10.0, ge=1)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    # Response bodies are read up to this many bytes and stored truncated.
    response_body_limit: int = Field(default=64 * 1024, ge=0)
    # CIDR ranges that are reachable although private or loopback (self-hosting, tests).
    allow_private_networks: list[str] = []
    # At most this many attempts in flight from one replica to one endpoint: a receiver that
    # hangs holds no more of a replica's work than this (the rest waits in a defer queue).
    endpoint_replica_concurrency: int = Field(default=16, ge=1, le=1000)
    # The delivery log (attempts, and final deliveries) is kept this long, then pruned.
    retention_days: float = Field(default=30.0, gt=0)
    prune_interval_seconds: float = Field(default=3600.0, ge=0)
    # How often the waiting-messages and endpoints-by-state gauges are measured (0: never).
    gauge_interval_seconds: float = Field(default=15.0, ge=0)
    prefetch: int = 256
    max_connections: int = 512
    # A limited attempt waits in one of these defer queues (escalating for a busy endpoint),
    # not counted as an attempt.
    defer_delays_ms: tuple[int, ...] = (250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000)
    # Retries of a public event's fan-out that failed (MongoDB or the broker away).
    fanout_retry_delays_ms: tuple[int, ...] = (1_000, 10_000, 60_000, 300_000)
    # Retries of a recovery Operation's command; after the last one the Operation is failed.
    recover_retry_delays_ms: tuple[int, ...] = (5_000, 60_000, 600_000)
    # A fan-out waits this long for a place under ENDPOINT_REPLICA_CONCURRENCY before it hands
    # the attempt to a command: long enough for a fast receiver to free one.
    local_wait_seconds: float = Field(default=0.2, ge=0)
    # The outbox (endpoint notices are written with the health change that causes them): the
    # relay publishes what a writer left behind for this long.
    outbox_grace_ms: int = Field(default=10_000, ge=0)
    outbox_relay_interval_seconds: float = Field(default=2.0, ge=0)

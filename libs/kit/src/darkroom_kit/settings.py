"""Settings shared by every service, read from the environment once in each ``main()``."""

from __future__ import annotations

import ipaddress
from typing import Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from darkroom_kit.links import MediaLinks, SigningKey


class CommonSettings(BaseSettings):
    """Connection and naming settings every darkroom service needs.

    The defaults point at the embedded development stack (`make run`) on 127.0.0.1.
    """

    model_config = SettingsConfigDict(extra="ignore", env_nested_delimiter="__")

    mongo_url: str = "mongodb://127.0.0.1:27017"
    mongo_db: str = "darkroom"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    s3_endpoint_url: str | None = "http://127.0.0.1:9000"
    # The S3 address clients reach, when not the one above (which the services use): presigned
    # URLs handed to clients name it. None: the same.
    s3_public_endpoint_url: str | None = None
    s3_access_key: SecretStr = SecretStr("darkroom")
    s3_secret_key: SecretStr = SecretStr("darkroom-secret")
    s3_region: str = "us-east-1"
    s3_bucket: str = "darkroom"
    # Prefix of every exchange and queue name: lets test runs and environments share one broker
    # without ever seeing each other's messages.
    amqp_namespace: str = "darkroom"
    # How clients reach the public API (behind a reverse proxy: the proxy's URL); used in every URL
    # the API and webhooks hand out.
    public_base_url: str = "http://127.0.0.1:8080"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    log_level: str = "INFO"
    log_json: bool = True
    # Traces go over OTLP (HTTP) to this collector when set (the OpenTelemetry SDK's own variable,
    # which also reads OTEL_EXPORTER_OTLP_HEADERS and the like); unset, tracing costs nothing.
    otel_exporter_otlp_endpoint: str | None = None
    # How often each consumer measures its queue (messages waiting, age of the oldest).
    queue_gauge_interval_seconds: float = Field(default=5.0, ge=0)
    # Consumers: how many unacknowledged messages one replica holds at once.
    prefetch: int = Field(default=64, ge=1, le=5000)
    # The broker dead-letters a message redelivered this many times (a poison message that keeps
    # crashing its consumer), independently of the application's own retry policy.
    delivery_limit: int = Field(default=20, ge=1)
    # SIGTERM to exit: how long requests and messages in flight may take to finish (Kubernetes'
    # default terminationGracePeriodSeconds; it kills the process when it runs out).
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # Each /readyz dependency check must answer within this, or that dependency is "down".
    ready_check_timeout_seconds: float = Field(default=2.0, gt=0)


DEVELOPMENT_KEY_ID = "dev"
DEVELOPMENT_SECRET = "darkroom-development-media-key"


def _development_keys() -> list[SigningKey]:
    return [SigningKey(id=DEVELOPMENT_KEY_ID, secret=SecretStr(DEVELOPMENT_SECRET))]


def _loopback(host: str) -> bool:
    """Whether only this machine reaches ``host`` (where the development key is accepted)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MediaLinkSettings(BaseSettings):
    """Signed media links (:mod:`darkroom_kit.links`): upload-ingest signs them in API answers,
    webhook-dispatch in webhook payloads, so both must hold the same keys."""

    model_config = SettingsConfigDict(extra="ignore", env_nested_delimiter="__")

    # JSON: [{"id": "2026-12", "secret": "..."}, {"id": "2026-06", "secret": "..."}]. New links
    # are signed with the first; a link signed with any listed key is accepted. Rotate by putting
    # a new key first and removing the old one once its longest-lived links have expired
    # (WEBHOOK_MEDIA_LINK_SECONDS). The default is for development only: set your own.
    media_signing_keys: list[SigningKey] = Field(default_factory=_development_keys, min_length=1)
    # How long the links in API answers work (at least; see the window).
    media_link_seconds: int = Field(default=4 * 3600, ge=60, le=30 * 24 * 3600)
    # Expiries are rounded up to a multiple of this, so a photo asked for again within it has
    # the same URLs and caches can hit.
    media_link_window_seconds: int = Field(default=3600, ge=1, le=24 * 3600)
    # How long the links in webhook payloads work: a receiver may fetch later, and a delivery
    # may be retried for days.
    webhook_media_link_seconds: int = Field(default=7 * 24 * 3600, ge=60, le=30 * 24 * 3600)
    # The longest a cache (browser, CDN) may keep a file served through a link before asking
    # again: how long a hidden or deleted photo may still be seen from a cache.
    media_cache_seconds: int = Field(default=300, ge=0)

    @model_validator(mode="after")
    def _no_development_key_in_public(self) -> Self:
        # The development key is in the source: anyone could sign links with it. It is only
        # accepted where the API is reachable from this machine alone.
        base_url = getattr(self, "public_base_url", "")
        host = (urlsplit(base_url).hostname or "") if base_url else ""
        development = any(
            k.id == DEVELOPMENT_KEY_ID or k.secret.get_secret_value() == DEVELOPMENT_SECRET
            for k in self.media_signing_keys
        )
        # No base URL at all: nothing is handed out (a command-line tool's settings).
        if development and base_url and not _loopback(host):
            raise ValueError(
                f"MEDIA_SIGNING_KEYS must be set for a public PUBLIC_BASE_URL ({base_url}): "
                'e.g. [{"id": "2026-12", "secret": "<32+ random characters>"}]'
            )
        return self

    def media_links(self, base_url: str) -> MediaLinks:
        return MediaLinks(base_url, self.media_signing_keys, self.media_link_window_seconds)

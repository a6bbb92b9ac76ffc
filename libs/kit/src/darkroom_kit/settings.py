"""Settings shared by every service, read from the environment once in each ``main()``."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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

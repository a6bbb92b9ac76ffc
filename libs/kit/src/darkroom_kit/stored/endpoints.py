"""The webhook endpoint record (collection ``webhook_endpoints``; upload-ingest writes it,
webhook-dispatch reads it and records the endpoint's health)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

from darkroom_kit.stored._base import Record


class StoredSecret(BaseModel):
    model_config = ConfigDict(extra="ignore")

    secret: str
    created_ms: int | None = None
    # Set while a rotation's grace period runs: until then the old secret signs too.
    expires_ms: int | None = None

    def valid_at(self, ms: int) -> bool:
        return self.expires_ms is None or self.expires_ms > ms


class EndpointRecord(Record):
    url: str
    event_types: list[str]
    description: str | None = None
    # Only messages about these darkroom events (None: every event).
    event_ids: list[str] | None = None
    rate_limit: int | None = None
    max_concurrency: int | None = None
    enabled: bool = True
    # Since when it fails (the first failure after a success); None while healthy.
    failing_since_ms: int | None = None
    disabled_reason: str | None = None
    disabled_ms: int | None = None
    created_ms: int
    secrets: list[StoredSecret] = Field(default_factory=list)

    @property
    def shown_url(self) -> str:
        """The URL as answers and notices show it: a password in it (basic auth for the
        receiver) is a secret, kept for delivering and never shown back."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> EndpointRecord:
        return cls.of(doc)

    def to_document(self) -> dict[str, Any]:
        return self.document()

    def signing_secrets(self, at_ms: int) -> list[str]:
        """The secrets that sign a request made at ``at_ms`` (two during a rotation)."""
        return [s.secret for s in self.secrets if s.valid_at(at_ms)]

    @property
    def unlimited(self) -> bool:
        """No rate or concurrency limit of its own."""
        return not self.max_concurrency and not self.rate_limit

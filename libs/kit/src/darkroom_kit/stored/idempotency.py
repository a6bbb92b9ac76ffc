"""The Idempotency-Key record (collection ``idempotency_keys``; upload-ingest writes it): the
claim of a write's key while its first request runs, then that request's answer, replayed to
every repeat until the record expires (``expires_at``, a TTL index)."""

from __future__ import annotations

from darkroom_kit.statuses import IdempotencyState
from darkroom_kit.stored._base import Record


class IdempotencyRecord(Record):
    # What the first request was (method, path, body or length), so a repeat with another
    # request is told apart.
    fingerprint: str
    state: IdempotencyState
    started_ms: int | None = None
    # The first answer, set when the state becomes done.
    status: int | None = None
    body: bytes | None = None
    content_type: str | None = None

    def answer(self) -> tuple[int, bytes, str]:
        """The first request's answer: status, body and Content-Type."""
        if self.status is None or self.body is None or self.content_type is None:
            raise ValueError(f"idempotency key {self.id} holds no answer")
        return self.status, self.body, self.content_type

"""The API token record (collection ``tokens``; upload-ingest writes it, from its CLI)."""

from __future__ import annotations

from pydantic import Field

from darkroom_kit.stored._base import Record


class TokenRecord(Record):
    name: str
    # The token's hash (the token itself is never stored); a listing leaves it out.
    token_hash: str | None = Field(default=None, alias="hash")
    scopes: list[str]
    # A gallery token is bound to this one event.
    event_id: str | None = None
    created_ms: int
    revoked: bool = False
    # A guest upload link: when it stops working, and what it may add in all (None: no limit).
    guest: bool = False
    expires_ms: int | None = None
    max_files: int | None = None
    max_bytes: int | None = None
    files_used: int = 0
    bytes_used: int = 0

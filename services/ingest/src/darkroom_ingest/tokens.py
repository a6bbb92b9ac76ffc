"""API tokens and scopes (pure: no I/O)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

TOKEN_PREFIX = "drk_"


class Scope(StrEnum):
    PHOTOS_READ = "photos.read"
    PHOTOS_WRITE = "photos.write"
    # Adds photos to the token's one event, and nothing else (a guest upload link).
    PHOTOS_UPLOAD = "photos.upload"
    EVENTS_READ = "events.read"
    EVENTS_WRITE = "events.write"
    WEBHOOKS_MANAGE = "webhooks.manage"
    ADMIN = "admin"


# What a scope implies: a writer may read what it writes; admin may do everything.
_IMPLIED: dict[Scope, set[Scope]] = {
    Scope.PHOTOS_WRITE: {Scope.PHOTOS_READ, Scope.EVENTS_READ, Scope.PHOTOS_UPLOAD},
    Scope.EVENTS_WRITE: {Scope.EVENTS_READ},
    Scope.PHOTOS_READ: {Scope.EVENTS_READ},
    Scope.ADMIN: set(Scope),
}


def parse_scopes(raw: str | list[str]) -> list[Scope]:
    items = raw.split(",") if isinstance(raw, str) else raw
    out: list[Scope] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            scope = Scope(item)
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise ValueError(f"unknown scope {item!r} (known: {known})") from None
        if scope not in out:
            out.append(scope)
    if not out:
        raise ValueError("at least one scope is needed")
    return out


def effective_scopes(granted: list[str]) -> set[str]:
    out: set[str] = set()
    for raw in granted:
        scope = Scope(raw)
        out.add(scope.value)
        out.update(s.value for s in _IMPLIED.get(scope, set()))
    return out


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens are 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    name: str
    scopes: list[str]
    event_id: str | None = None  # gallery tokens are bound to one event
    created_ms: int = 0
    # A guest upload link, and its limits: files and bytes it may add in all (None: no limit).
    guest: bool = False
    max_files: int | None = None
    max_bytes: int | None = None

    @property
    def limited(self) -> bool:
        return self.max_files is not None or self.max_bytes is not None

    def sees(self, event_id: str) -> bool:
        """A token bound to one event sees nothing of another (not found, not refused)."""
        return self.event_id is None or self.event_id == event_id

    def may(self, scope: Scope) -> bool:
        return scope.value in effective_scopes(self.scopes)

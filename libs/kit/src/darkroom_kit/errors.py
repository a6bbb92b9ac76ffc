"""Errors of the business layer, declared once in a catalogue (code, title, status).

A service raises ``SLUG_TAKEN.error("...")`` and knows nothing of HTTP; the edge
(:func:`darkroom_kit.httpapp.problem_middleware`) renders any :class:`ServiceError` as
problem+json, and the OpenAPI document lists each operation's catalogue entries with their
codes, so what a route can answer is written where the route is declared and nowhere else.

The status is part of the catalogue rather than of a mapping at the edge because it is a fact
about the error (a conflict, a missing thing), the same for every protocol that reports it;
tusd's error list carries it the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from darkroom_kit.problems import FieldError, Problem


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """One entry of an error catalogue."""

    code: str
    status: int
    title: str

    def error(
        self,
        detail: str | None = None,
        *,
        errors: Iterable[FieldError] = (),
        extra: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> ServiceError:
        return ServiceError(self, detail, list(errors), extra or {}, retry_after)


@dataclass(slots=True)
class ServiceError(Exception):
    """What a service raises: a catalogue entry and the details of this occurrence."""

    kind: ErrorKind
    detail: str | None = None
    errors: list[FieldError] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    retry_after: int | None = None

    def __str__(self) -> str:
        return f"{self.kind.status} {self.kind.code}: {self.detail or self.kind.title}"

    @property
    def code(self) -> str:
        return self.kind.code

    def problem(self) -> Problem:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        return Problem(
            self.kind.status,
            self.kind.code,
            self.kind.title,
            self.detail,
            errors=self.errors,
            extra=self.extra,
            headers=headers,
        )


def not_found_kind(what: str) -> ErrorKind:
    """``<what>_not_found``: the one shape of every 404 for a resource."""
    return ErrorKind(f"{what}_not_found", 404, f"{what.replace('_', ' ').capitalize()} not found")


def not_found(what: str, ident: str) -> ServiceError:
    return not_found_kind(what).error(f"No {what.replace('_', ' ')} with id {ident!r}.")

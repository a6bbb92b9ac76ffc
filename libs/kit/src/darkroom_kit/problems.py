"""Errors as RFC 9457 ``application/problem+json`` with a stable machine-readable ``code``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"


@dataclass(frozen=True, slots=True)
class FieldError:
    """Where a problem is: a JSON pointer (``/name``) or a form field (``photos[2]``)."""

    field: str
    detail: str
    code: str | None = None

    def as_dict(self) -> dict[str, str]:
        out = {"field": self.field, "detail": self.detail}
        if self.code:
            out["code"] = self.code
        return out


@dataclass(slots=True)
class Problem(Exception):
    """An error a client caused or must hear about; rendered as problem+json."""

    status: int
    code: str
    title: str
    detail: str | None = None
    errors: list[FieldError] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.detail or self.title}"

    def body(self, instance: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": f"https://darkroom.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
        }
        if self.detail:
            out["detail"] = self.detail
        if instance:
            out["instance"] = instance
        if self.errors:
            out["errors"] = [e.as_dict() for e in self.errors]
        out.update(self.extra)
        return out


def problem_response(problem: Problem, instance: str | None = None) -> web.Response:
    return web.Response(
        status=problem.status,
        body=json.dumps(problem.body(instance)).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )


def not_found(what: str, ident: str) -> Problem:
    return Problem(
        404,
        f"{what}_not_found",
        f"{what.replace('_', ' ').capitalize()} not found",
        f"No {what.replace('_', ' ')} with id {ident!r}.",
    )

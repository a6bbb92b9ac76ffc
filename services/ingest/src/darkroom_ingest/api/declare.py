"""How a route is declared, and the wrapper that enforces the declaration.

A route says once its method, path, scope, body, query, answers and the errors it can answer
with. The wrapper authenticates, checks the scope, parses and validates body and query, calls the
handler with the principal and the validated input, and serializes what the handler returns
through the declared response model; the OpenAPI document (``api.openapi``) is generated from the
same declarations. A handler never authenticates nor reads raw input it declared.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from aiohttp import web
from darkroom_kit.errors import ErrorKind
from darkroom_kit.problems import Problem
from pydantic import BaseModel

from darkroom_ingest.deps import DEPS, Deps
from darkroom_ingest.tokens import Principal, Scope
from darkroom_ingest.web_support import BODY_KIND_ATTR, authenticate, parse_json, parse_query

M = TypeVar("M", bound=BaseModel)

# The caller of a public route: no token, no scope.
ANONYMOUS = Principal(token_id="", name="anonymous", scopes=[])

BodyKind = Literal["json", "multipart", "raw", "offset-octet-stream"]


@dataclass(frozen=True, slots=True)
class Call:
    """What a handler gets besides its validated input."""

    request: web.Request
    principal: Principal
    deps: Deps

    def path(self, name: str) -> str:
        return self.request.match_info[name]


@dataclass(frozen=True, slots=True)
class Reply(Generic[M]):
    """An answer with a status or headers other than the route's default."""

    body: M
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Header:
    """A request header a route reads (documented; the handler reads it from the request)."""

    name: str
    description: str
    pattern: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    description: str
    tag: str
    # None: any valid token. A tuple: at least one of these scopes.
    scope: Scope | tuple[Scope, ...] | None
    body: type[BaseModel] | None = None
    body_kind: BodyKind | None = None
    # An empty body stands for the body model's defaults.
    body_optional: bool = False
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    # Other success statuses this route answers with, and when.
    also: dict[int, str] = field(default_factory=dict)
    # Binary answers (serving): a stream, not JSON.
    binary: bool = False
    errors: tuple[ErrorKind, ...] = ()
    headers: tuple[Header, ...] = ()
    # Whether the success answer carries a Location header.
    location: bool = False
    # No token needed (tus discovery): the handler gets ANONYMOUS.
    public: bool = False
    # The answer is headers and a status, no body (tus): the handler builds the response.
    raw: bool = False
    # The headers a raw answer carries (documented).
    answer_headers: tuple[Header, ...] = ()

    @property
    def statuses(self) -> frozenset[int]:
        return frozenset({self.status, *self.also})

    @property
    def scopes(self) -> tuple[Scope, ...]:
        if self.scope is None:
            return ()
        return self.scope if isinstance(self.scope, tuple) else (self.scope,)

    def aiohttp_handler(self) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            principal = ANONYMOUS if self.public else await authenticate(request)
            self._check_scope(principal)
            inputs: dict[str, Any] = {}
            if self.body is not None and self.body_kind == "json":
                if self.body_optional and not await request.read():
                    inputs["body"] = self.body()
                else:
                    inputs["body"] = await parse_json(request, self.body)
            if self.query is not None:
                inputs["query"] = parse_query(request, self.query)
            result = await self.handler(Call(request, principal, request.app[DEPS]), **inputs)
            return self._render(result)

        handle.__name__ = self.handler.__name__
        setattr(handle, BODY_KIND_ATTR, self.body_kind)
        return handle

    def _check_scope(self, principal: Principal) -> None:
        scopes = self.scopes
        if not scopes or any(principal.may(s) for s in scopes):
            return
        names = " or ".join(repr(s.value) for s in scopes)
        raise Problem(
            403,
            "insufficient_scope",
            "The token lacks a scope",
            f"This needs the scope {names}.",
            extra={"required_scope": scopes[0].value},
        )

    def _render(self, result: Any) -> web.StreamResponse:
        if isinstance(result, web.StreamResponse):
            if self.raw:
                if result.status not in self.statuses:
                    raise TypeError(f"{self.operation_id} answered {result.status}, not declared")
                return result
            if not self.binary and result.status not in (204, 304):
                raise TypeError(f"{self.operation_id} answered a raw response it did not declare")
            return result
        if result is None:
            if self.response is not None:
                raise TypeError(f"{self.operation_id} answered nothing; it declares a body")
            return web.Response(status=self.status)
        reply = result if isinstance(result, Reply) else Reply(result)
        status = reply.status or self.status
        if status not in self.statuses:
            raise TypeError(f"{self.operation_id} answered {status}, not a declared status")
        if self.response is None or not isinstance(reply.body, self.response):
            raise TypeError(
                f"{self.operation_id} answered a {type(reply.body).__name__}, not its declared "
                f"{self.response.__name__ if self.response else 'nothing'}"
            )
        return web.Response(
            body=reply.body.model_dump_json(by_alias=True).encode(),
            status=status,
            content_type="application/json",
            headers=reply.headers or None,
        )


class RouteTable:
    """The routes of one resource module, declared beside their handlers (aiohttp's
    ``RouteTableDef``, with the contract attached)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.routes: list[Route] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        operation_id: str,
        summary: str,
        scope: Scope | tuple[Scope, ...] | None,
        **options: Any,
    ) -> Callable[[Handler], Handler]:
        def declare(handler: Handler) -> Handler:
            body = options.get("body")
            if body is not None:
                options.setdefault("body_kind", "json")
            self.routes.append(
                Route(
                    method,
                    path,
                    handler,
                    operation_id,
                    summary,
                    (handler.__doc__ or summary).strip(),
                    self.tag,
                    scope,
                    **options,
                )
            )
            return handler

        return declare

    def get(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kw)

    def head(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("HEAD", path, **kw)

    def options(self, path: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.route("OPTIONS", path, **kw)


def register(app: web.Application, routes: list[Route]) -> None:
    for route in routes:
        app.router.add_route(route.method, route.path, route.aiohttp_handler())

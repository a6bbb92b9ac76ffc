"""The OpenAPI 3.1 document, generated from the route declarations (``declare.Route``) and the
webhook catalogue (``darkroom_kit.catalogue``): what a route declares is what is documented."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

from darkroom_kit import catalogue
from darkroom_kit.errors import ErrorKind
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from darkroom_ingest.api.declare import Route
from darkroom_ingest.schemas.common import ProblemOut

REF = "#/components/schemas/{model}"
Mode = Literal["validation", "serialization"]

# Answers the wrapper and the middlewares can give to any route, by what the route declares.
UNAUTHENTICATED = (
    ErrorKind("unauthenticated", 401, "Authentication required"),
    ErrorKind("invalid_token", 401, "The token is not valid"),
    ErrorKind("token_expired", 401, "The token has expired"),
)
INSUFFICIENT_SCOPE = ErrorKind("insufficient_scope", 403, "The token lacks a scope")
VALIDATION = ErrorKind("validation_failed", 422, "The request is not valid")
JSON_BODY = (
    ErrorKind("malformed_json", 400, "The body is not valid JSON"),
    ErrorKind("unsupported_media_type", 415, "Send JSON"),
    ErrorKind("body_too_large", 413, "Request body too large"),
)
IDEMPOTENCY = (
    ErrorKind("invalid_idempotency_key", 400, "The Idempotency-Key is not valid"),
    ErrorKind("idempotency_key_reused", 422, "The Idempotency-Key was used for another request"),
    ErrorKind("idempotency_key_in_use", 409, "A request with this key is in progress"),
)
OUTAGES = (
    ErrorKind("database_unavailable", 503, "The database is not answering"),
    ErrorKind("storage_unavailable", 503, "Object storage is not answering"),
)
WRITES = {"POST", "PUT", "PATCH", "DELETE"}
IDEMPOTENT_WRITES = {"POST", "PUT", "PATCH", "DELETE"}

PATH_PARAMS = {
    "event_id": "The event's id (ev_...).",
    "photo_id": "The photo's id (ph_...).",
    "upload_id": "The upload's id.",
    "index": "The chunk's index, from 0.",
    "part_number": "The S3 part's number, from 1.",
    "link_id": "The guest link's id (its token's id).",
    "asset": "The file's name (guest.js, tus.min.js).",
    "webhook_id": "The webhook endpoint's id (wh_...).",
    "delivery_id": "The delivery's id.",
    "operation_id": "The Operation's id (op_...).",
    "slug": "The event's slug.",
    "filename": "The photo's file name within the event.",
}


def errors_of(route: Route) -> list[ErrorKind]:
    """Every problem a route can answer with: its own, and those of what it declares."""
    kinds: list[ErrorKind] = [*OUTAGES] if route.public else [*UNAUTHENTICATED, *OUTAGES]
    if route.scopes:
        kinds.append(INSUFFICIENT_SCOPE)
    if route.body is not None or route.query is not None or route.method in WRITES:
        kinds.append(VALIDATION)
    if route.body_kind == "json":
        kinds.extend(JSON_BODY)
    if route.method in IDEMPOTENT_WRITES:
        kinds.extend(IDEMPOTENCY)
    kinds.extend(route.errors)
    return list(dict.fromkeys(kinds))


def _problems(kinds: list[ErrorKind]) -> dict[str, Any]:
    by_status: dict[int, list[ErrorKind]] = defaultdict(list)
    for kind in kinds:
        if all(k.code != kind.code for k in by_status[kind.status]):
            by_status[kind.status].append(kind)
    out: dict[str, Any] = {}
    for status, group in sorted(by_status.items()):
        lines = "; ".join(f"`{k.code}`: {k.title}" for k in group)
        out[str(status)] = {
            "description": f"Problem ({lines}).",
            "content": {
                "application/problem+json": {
                    "schema": {"$ref": REF.format(model="ProblemOut")},
                    "examples": {
                        k.code: {
                            "value": {
                                "type": f"https://darkroom.dev/problems/{k.code}",
                                "title": k.title,
                                "status": k.status,
                                "code": k.code,
                            }
                        }
                        for k in group
                    },
                }
            },
        }
    return out


def _path_params(path: str) -> list[str]:
    return [seg[1:-1] for seg in path.split("/") if seg.startswith("{") and seg.endswith("}")]


def _query_params(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    """The query model's fields as parameters; the schemas they refer to (an enum) join the
    components."""
    schema = model.model_json_schema(ref_template=REF)
    _merge(schemas, schema.get("$defs", {}))
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema["properties"].items():
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if "description" in prop:
            param["description"] = prop.pop("description")
        prop.pop("title", None)
        param["schema"] = prop
        params.append(param)
    return params


def _merge(schemas: dict[str, Any], more: dict[str, Any]) -> None:
    for name, schema in more.items():
        if name in schemas and schemas[name] != schema:
            raise ValueError(f"schema {name} means two things in the document")
        schemas[name] = schema


def _operation(route: Route, ref: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "description": route.description,
        "tags": [route.tag],
        "parameters": [
            {
                "name": p,
                "in": "path",
                "required": True,
                "description": PATH_PARAMS.get(p, p),
                "schema": {"type": "string"},
            }
            for p in _path_params(route.path)
        ],
        "security": []
        if route.public
        else [
            {"bearer": list(map(str, route.scopes))},
            {"token": list(map(str, route.scopes))},
        ],
    }
    if route.method in IDEMPOTENT_WRITES:
        op["parameters"].append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": "Repeat a write safely: the same key and body replay the first "
                "answer for 24 hours.",
            }
        )
    op["parameters"].extend(
        {
            "name": h.name,
            "in": "header",
            "required": False,
            "description": h.description,
            "schema": {"type": "string"},
        }
        for h in route.headers
    )
    if route.query is not None:
        op["parameters"].extend(_query_params(route.query, schemas))
    if route.body is not None:
        op["requestBody"] = {
            "required": not route.body_optional,
            "content": {"application/json": {"schema": ref(route.body, "validation")}},
        }
    elif route.body_kind == "raw":
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    elif route.body_kind == "offset-octet-stream":
        op["requestBody"] = {
            "required": False,
            "content": {
                "application/offset+octet-stream": {
                    "schema": {"type": "string", "format": "binary"}
                }
            },
        }
    elif route.body_kind == "multipart":
        op["requestBody"] = {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "photos": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                                "description": "The files (also accepted: photos[], file, files).",
                            },
                            "category_id": {
                                "type": "string",
                                "description": "File every photo under this category.",
                            },
                        },
                        "required": ["photos"],
                    }
                }
            },
        }
    responses: dict[str, Any] = {}
    for status in sorted(route.statuses):
        answer: dict[str, Any] = {"description": route.also.get(status, "OK")}
        if route.response is not None and status != 304:
            answer["content"] = {
                "application/json": {"schema": ref(route.response, "serialization")}
            }
        elif route.binary and status != 304:
            answer["content"] = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
        if route.location and status in (200, 201, 202):
            answer["headers"] = {
                "Location": {"description": "The new resource.", "schema": {"type": "string"}}
            }
        if route.answer_headers:
            answer.setdefault("headers", {}).update(
                {
                    h.name: {"description": h.description, "schema": {"type": "string"}}
                    for h in route.answer_headers
                }
            )
        responses[str(status)] = answer
    responses.update(_problems(errors_of(route)))
    op["responses"] = responses
    return op


def openapi_document(routes: list[Route], base_url: str) -> dict[str, Any]:
    keyed: list[tuple[type[BaseModel], Mode]] = [(ProblemOut, "serialization")]
    for r in routes:
        if r.body is not None:
            keyed.append((r.body, "validation"))
        if r.response is not None:
            keyed.append((r.response, "serialization"))
    refs, schema = models_json_schema(list(dict.fromkeys(keyed)), ref_template=REF)
    schemas: dict[str, Any] = dict(schema.get("$defs", {}))

    def ref(model: type[BaseModel], mode: Mode) -> Any:
        return refs[(model, mode)]

    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r, ref, schemas)
    webhooks, webhook_schemas = catalogue.openapi_webhooks(REF)
    _merge(schemas, webhook_schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "darkroom API",
            "version": "1.0.0",
            "description": "Events, photos, uploads, serving and webhooks. Errors are "
            "application/problem+json (RFC 9457) with a stable `code`. Authenticate with "
            "`Authorization: Bearer <token>` or `X-Auth-Token`.",
        },
        "servers": [{"url": base_url}],
        "tags": [{"name": t} for t in dict.fromkeys(r.tag for r in routes)],
        "paths": paths,
        "webhooks": webhooks,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "token": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"},
            },
        },
    }

"""The API's routes, declared once: they register the handlers and generate the OpenAPI document
from the same pydantic models that validate requests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from darkroom_ingest import handlers, models
from darkroom_ingest.tokens import Scope


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    tag: str
    scope: Scope | None = None
    body: type[BaseModel] | None = None
    multipart: bool = False
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    binary: bool = False
    raw_body: bool = False


def api_routes() -> list[Route]:
    page = models.PageQuery
    return [
        Route(
            "GET",
            "/v1/me",
            handlers.get_me,
            "What this token is and may do",
            "tokens",
            response=models.MeOut,
        ),
        Route(
            "POST",
            "/v1/events",
            handlers.create_event,
            "Create an event",
            "events",
            Scope.EVENTS_WRITE,
            body=models.EventCreate,
            response=models.EventOut,
            status=201,
        ),
        Route(
            "GET",
            "/v1/events",
            handlers.list_events,
            "List events (slug= finds one by its slug)",
            "events",
            Scope.EVENTS_READ,
            query=models.EventListQuery,
            response=models.Page[models.EventOut],
        ),
        Route(
            "GET",
            "/v1/events/{event_id}",
            handlers.get_event,
            "Read an event",
            "events",
            Scope.EVENTS_READ,
            response=models.EventOut,
        ),
        Route(
            "PATCH",
            "/v1/events/{event_id}",
            handlers.patch_event,
            "Change an event's name or photo cap (null removes the cap)",
            "events",
            Scope.EVENTS_WRITE,
            body=models.EventPatch,
            response=models.EventOut,
        ),
        Route(
            "POST",
            "/v1/events/{event_id}/archive",
            handlers.archive_event,
            "Archive an event: no new uploads; emits event.archived once",
            "events",
            Scope.EVENTS_WRITE,
            response=models.EventOut,
        ),
        Route(
            "POST",
            "/v1/events/{event_id}/photos",
            handlers.upload_batch,
            "Upload a batch of photos (multipart/form-data, field 'photos', optional "
            "'category_id')",
            "photos",
            Scope.PHOTOS_WRITE,
            multipart=True,
            response=models.BatchOut,
            status=201,
        ),
        Route(
            "POST",
            "/v1/events/{event_id}/uploads",
            handlers.create_upload,
            "Start a chunked, resumable upload (videos, and any file over the batch limit)",
            "uploads",
            Scope.PHOTOS_WRITE,
            body=models.UploadCreate,
            response=models.UploadOut,
            status=201,
        ),
        Route(
            "GET",
            "/v1/uploads/{upload_id}",
            handlers.get_upload,
            "An upload's state and exactly which chunks arrived (how a client resumes)",
            "uploads",
            Scope.PHOTOS_WRITE,
            response=models.UploadOut,
        ),
        Route(
            "PUT",
            "/v1/uploads/{upload_id}/chunks/{index}",
            handlers.put_chunk,
            "Send chunk i (raw body, exactly chunk_size bytes but the last); any order, in "
            "parallel, re-sending replaces. Optional Content-Digest (sha-256, crc32c) or "
            "X-Checksum-CRC32C",
            "uploads",
            Scope.PHOTOS_WRITE,
            response=models.ChunkOut,
            raw_body=True,
        ),
        Route(
            "POST",
            "/v1/uploads/{upload_id}/complete",
            handlers.complete_upload,
            "Assemble the file and create the photo, exactly once",
            "uploads",
            Scope.PHOTOS_WRITE,
            response=models.PhotoOut,
        ),
        Route(
            "DELETE",
            "/v1/uploads/{upload_id}",
            handlers.delete_upload,
            "Cancel an upload and drop its chunks",
            "uploads",
            Scope.PHOTOS_WRITE,
            status=204,
        ),
        Route(
            "GET",
            "/v1/events/{event_id}/photos",
            handlers.list_photos,
            "List an event's photos",
            "photos",
            Scope.PHOTOS_READ,
            query=models.PhotoListQuery,
            response=models.Page[models.PhotoOut],
        ),
        Route(
            "GET",
            "/v1/photos/{photo_id}",
            handlers.get_photo,
            "Read a photo",
            "photos",
            Scope.PHOTOS_READ,
            response=models.PhotoOut,
        ),
        Route(
            "PATCH",
            "/v1/photos/{photo_id}",
            handlers.patch_photo,
            "Change a photo's title, description, rating, keywords, category or visibility",
            "photos",
            Scope.PHOTOS_WRITE,
            body=models.PhotoPatch,
            response=models.PhotoOut,
        ),
        Route(
            "POST",
            "/v1/photos/bulk-delete",
            handlers.bulk_delete_photos,
            "Delete many photos; one photo.deleted each",
            "photos",
            Scope.PHOTOS_WRITE,
            body=models.BulkDelete,
            response=models.BulkDeleteOut,
        ),
        Route(
            "POST",
            "/v1/photos/repair-dimensions",
            handlers.repair_dimensions,
            "Re-read missing width/height (and capture dates) from stored files, as an Operation",
            "operations",
            Scope.PHOTOS_WRITE,
            body=models.RepairRequest,
            query=models.WaitQuery,
            response=models.OperationOut,
            status=202,
        ),
        Route(
            "GET",
            "/v1/operations/{operation_id}",
            handlers.get_operation,
            "An Operation's state, progress and, when done, its result (photos.read for a "
            "repair, webhooks.manage for a webhook recovery)",
            "operations",
            None,
            query=models.WaitQuery,
            response=models.OperationOut,
        ),
        Route(
            "DELETE",
            "/v1/photos/{photo_id}",
            handlers.delete_photo,
            "Delete a photo, its variants and its record",
            "photos",
            Scope.PHOTOS_WRITE,
            status=204,
        ),
        Route(
            "POST",
            "/v1/webhooks",
            handlers.create_webhook,
            "Register a webhook endpoint",
            "webhooks",
            Scope.WEBHOOKS_MANAGE,
            body=models.WebhookCreate,
            response=models.WebhookOut,
            status=201,
        ),
        Route(
            "GET",
            "/v1/webhooks",
            handlers.list_webhooks,
            "List webhook endpoints",
            "webhooks",
            Scope.WEBHOOKS_MANAGE,
            query=page,
            response=models.Page[models.WebhookOut],
        ),
        Route(
            "GET",
            "/v1/webhooks/{webhook_id}",
            handlers.get_webhook,
            "Read a webhook endpoint",
            "webhooks",
            Scope.WEBHOOKS_MANAGE,
            response=models.WebhookOut,
        ),
        Route(
            "PATCH",
            "/v1/webhooks/{webhook_id}",
            handlers.patch_webhook,
            "Change an endpoint's url, event types, description or enabled flag",
            "webhooks",
            Scope.WEBHOOKS_MANAGE,
            body=models.WebhookPatch,
            response=models.WebhookOut,
        ),
        Route(
            "POST",
            "/v1/webhooks/{webhook_id}/rotate-secret",
            handlers.rotate_webhook_secret,
            "A new signing secret; the old one also signs during the grace period (default 24 h)",
            "webhooks",
            Scope.WEBHOOKS_MANAGE,
            body=models.RotateSecret,
            response=models.WebhookOut,
        ),
        Route(
            "GET",
            "/v1/webhook-event-types",
            handlers.list_event_types,
            "The event types endpoints can subscribe to, with their JSON schemas",
            "webhooks",
            response=models.Page[models.EventTypeOut],
        ),
        Route(
            "DELETE",
            "/v1/webhooks/{webhook_id}",
            handlers.delete_webhook,
            "Delete a webhook endpoint",
            "webhooks",
            Scope.WEBHOOKS_MANAGE,
            status=204,
        ),
        Route(
            "GET",
            "/v1/webhooks/{webhook_id}/deliveries",
            handlers.list_deliveries,
            "An endpoint's deliveries, each with every attempt",
            "webhooks",
            Scope.WEBHOOKS_MANAGE,
            query=models.DeliveryQuery,
            response=models.Page[models.DeliveryOut],
        ),
        Route(
            "GET",
            "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}",
            handlers.get_delivery,
            "One delivery with every attempt: time, duration, status or error, response "
            "headers and (truncated) body",
            "webhooks",
            Scope.WEBHOOKS_MANAGE,
            response=models.DeliveryOut,
        ),
        Route(
            "POST",
            "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/resend",
            handlers.resend_delivery,
            "Send a finished delivery again (same webhook-id, fresh retry schedule)",
            "webhooks",
            Scope.WEBHOOKS_MANAGE,
            response=models.DeliveryOut,
            status=202,
        ),
        Route(
            "POST",
            "/v1/webhooks/{webhook_id}/recover",
            handlers.recover_webhook,
            "Send every failed delivery of a time range again, as an Operation",
            "webhooks",
            Scope.WEBHOOKS_MANAGE,
            body=models.RecoverRequest,
            query=models.WaitQuery,
            response=models.OperationOut,
            status=202,
        ),
        Route(
            "POST",
            "/v1/webhooks/{webhook_id}/test",
            handlers.send_test_message,
            "Send a signed webhook.test message now and return the attempt",
            "webhooks",
            Scope.WEBHOOKS_MANAGE,
            response=models.DeliveryOut,
        ),
        Route(
            "GET",
            "/photos/{slug}/{filename}",
            handlers.serve_original,
            "Serve an original",
            "serving",
            Scope.PHOTOS_READ,
            binary=True,
        ),
        Route(
            "GET",
            "/thumbnails/{slug}/{filename}",
            handlers.serve_thumbnail,
            "Serve a thumbnail (400 px long edge, JPEG)",
            "serving",
            Scope.PHOTOS_READ,
            binary=True,
        ),
        Route(
            "GET",
            "/heroes/{slug}/{filename}",
            handlers.serve_hero,
            "Serve a hero image (1600 px long edge, JPEG)",
            "serving",
            Scope.PHOTOS_READ,
            binary=True,
        ),
    ]


def register(app: web.Application, routes: list[Route]) -> None:
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemOut"}}
        },
    }


def openapi_document(routes: list[Route], base_url: str) -> dict[str, Any]:
    all_models: list[type[BaseModel]] = [models.ProblemOut]
    for r in routes:
        all_models.extend(m for m in (r.body, r.query, r.response) if m is not None)
    unique = list(dict.fromkeys(all_models))
    bodies = {r.body for r in routes}
    keyed: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (m, "validation" if m in bodies else "serialization") for m in unique
    ]
    refs, schema = models_json_schema(keyed, ref_template="#/components/schemas/{model}")
    schemas = schema.get("$defs", {})

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return refs[(model, mode)]  # type: ignore[index]

    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {
            "summary": r.summary,
            "tags": [r.tag],
            "operationId": f"{r.method.lower()}_{r.handler.__name__}",
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in _path_params(r.path)
            ],
            "responses": {
                "401": _problem("No token, or not a valid one"),
                "422": _problem("A field is not valid; errors[] says which"),
            },
        }
        if r.scope is not None:
            op["security"] = [{"bearer": [r.scope.value]}, {"token": [r.scope.value]}]
            op["responses"]["403"] = _problem(f"The token lacks the scope {r.scope.value}")
        if "{" in r.path:
            op["responses"]["404"] = _problem("Not found")
        if r.method in {"POST", "PATCH", "DELETE"}:
            op["parameters"].append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "maxLength": 255},
                    "description": "Repeat a write safely: the same key and body replay the first "
                    "answer.",
                }
            )
        if r.query is not None:
            props = r.query.model_json_schema()["properties"]
            op["parameters"].extend(
                {"name": n, "in": "query", "required": False, "schema": s} for n, s in props.items()
            )
        if r.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(r.body, "validation")}},
            }
        if r.raw_body:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/octet-stream": {
                        "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
                    }
                },
            }
        if r.multipart:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "photos": {
                                    "type": "array",
                                    "items": {
                                        "type": "string",
                                        "contentMediaType": "application/octet-stream",
                                    },
                                },
                                "category_id": {"type": "string"},
                            },
                            "required": ["photos"],
                        }
                    }
                },
            }
            op["responses"]["413"] = _problem("The batch is over the size limit")
            op["responses"]["400"] = _problem(
                "No file could be stored, or the photo cap would be exceeded"
            )
        ok: dict[str, Any] = {"description": "OK"}
        if r.response is not None:
            ok["content"] = {"application/json": {"schema": ref(r.response, "serialization")}}
        elif r.binary:
            ok["content"] = {
                "*/*": {
                    "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
                }
            }
        op["responses"][str(r.status)] = ok
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "darkroom API",
            "version": "1.0.0",
            "description": "Events, photos, uploads, serving and webhooks. Errors are "
            "application/problem+json (RFC 9457) with a stable `code`.",
        },
        "servers": [{"url": base_url}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "token": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"},
            },
        },
    }


def _path_params(path: str) -> list[str]:
    return [seg[1:-1] for seg in path.split("/") if seg.startswith("{") and seg.endswith("}")]

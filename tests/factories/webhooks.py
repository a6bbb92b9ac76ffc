"""What the webhook-dispatch tests share besides the ``serve`` and ``start_dispatch`` fixtures
(tests/integration/conftest.py): scripted receivers, endpoints registered through the API,
photo facts published straight to the broker, the delivery log and the dispatcher's metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from darkroom_ingest.settings import IngestSettings
from darkroom_kit import records
from darkroom_kit.messaging import Envelope, Topology

from tests.factories.api import Client, auth, make_event, upload_photos
from tests.factories.media import jpeg_bytes
from tests.factories.messaging import eventually, publish


class Scripted:
    """A receiver whose answers are scripted per request; the last one repeats. An answer is
    ``(status, headers, body)`` or a handler of its own."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.requests: list[tuple[float, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((time.monotonic(), dict(request.headers), await request.read()))
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if callable(answer):
            result: web.StreamResponse = await answer(request)
            return result
        status, headers, body = answer
        return web.Response(status=status, headers=headers, body=body)


Serve = Callable[[list[Any]], Awaitable[tuple[Scripted, str]]]
StartDispatch = Callable[..., Awaitable[Client]]


class NoDb(dict[str, Any]):
    """A database stand-in for an ``EndpointGate`` that must never find a record."""

    def __missing__(self, key: str) -> None:
        return None


async def register(
    api: Client, token: str, url: str, types: list[str], **fields: Any
) -> dict[str, Any]:
    resp = await api.post(
        "/v1/webhooks", json={"url": url, "event_types": types, **fields}, headers=auth(token)
    )
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def register_limited(
    api: Client, token: str, url: str, event_id: str, **limits: Any
) -> dict[str, Any]:
    """An endpoint for photo.uploaded of one darkroom event only, with ``limits``."""
    return await register(api, token, url, ["photo.uploaded"], event_ids=[event_id], **limits)


async def upload_one(api: Client, token: str) -> dict[str, Any]:
    """A new darkroom event with one photo uploaded; gives the event."""
    event = await make_event(api, token)
    await upload_photos(api, token, event["id"], ("p.jpg", jpeg_bytes(64, 64)))
    return event


async def publish_photo_events(settings: IngestSettings, event_id: str, count: int) -> None:
    """``count`` photo.uploaded facts about one darkroom event, as the API's outbox sends them."""
    await publish(
        settings.amqp_url,
        Topology(settings.amqp_namespace).events,
        *(
            Envelope.new(records.PHOTO_UPLOADED, {"photo": {"id": f"ph_{i}", "event_id": event_id}})
            for i in range(count)
        ),
    )


async def deliveries(api: Client, token: str, endpoint_id: str) -> list[dict[str, Any]]:
    resp = await api.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=auth(token))
    return list((await resp.json())["items"])


async def all_succeeded(
    api: Client, token: str, endpoint_id: str, count: int
) -> list[dict[str, Any]] | None:
    log = await deliveries(api, token, endpoint_id)
    done = len(log) == count and all(d["status"] == "succeeded" for d in log)
    return log if done else None


async def final_log(api: Client, token: str, endpoint_id: str, timeout: float = 20) -> Any:
    """The delivery log once its newest delivery is final (failed or succeeded)."""

    async def final() -> Any:
        log = await deliveries(api, token, endpoint_id)
        return log if log and log[0]["status"] in ("failed", "succeeded") else None

    return await eventually(final, timeout=timeout)


def unique_ids(scripted: Scripted) -> set[str]:
    return {headers["webhook-id"] for _, headers, _ in scripted.requests}


def sample(text: str, name: str, **labels: str) -> float | None:
    """One series of a /metrics text (None when it is not there)."""
    wanted = name + (
        "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    )
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def metric(client: Client, name: str, **labels: str) -> float | None:
    """One series of a service's /metrics (None when it is not there)."""
    return sample(await (await client.get("/metrics")).text(), name, **labels)


async def deferred_by(*replicas: Client, limit: str) -> float:
    """``webhook_attempts_deferred_total{limit=...}`` over the replicas."""
    total = 0.0
    for client in replicas:
        total += await metric(client, "webhook_attempts_deferred_total", limit=limit) or 0.0
    return total


def consumed(text: str, queue: str, outcome: str | None = None) -> float:
    """``messages_consumed_total`` of ``queue`` in a /metrics text: with ``outcome``, or all."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "messages_consumed_total"
        and s.labels["queue"] == queue
        and (outcome is None or s.labels["outcome"] == outcome)
    )


def schema_part(schema: dict[str, Any], *path: str) -> dict[str, Any]:
    """The sub-schema of an event type's message schema at the property ``path`` (``"data",
    "photo"``), following ``$ref``s into the schema's ``$defs``."""

    def resolved(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = schema["$defs"][str(node["$ref"]).rsplit("/", 1)[1]]
        return node

    node = resolved(schema)
    for name in path:
        node = resolved(node["properties"][name])
    return node

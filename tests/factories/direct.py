"""Direct uploads from a test: a ticket, the bytes PUT to its signed URL, the completion."""

from __future__ import annotations

from typing import Any

import aiohttp
from yarl import URL

from tests.factories.api import Client, auth


async def s3_put(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """A PUT to a signed URL, sent exactly as given (no credentials); its status and ETag."""
    async with (
        aiohttp.ClientSession() as session,
        session.put(URL(url, encoded=True), data=data, headers=headers) as resp,
    ):
        await resp.read()
        return resp.status, resp.headers.get("ETag", "")


async def ticket(
    api: Client, token: str, event_id: str, data: bytes, **fields: Any
) -> dict[str, Any]:
    body = {"filename": "a.jpg", "size": len(data), "mime_type": "image/jpeg", **fields}
    resp = await api.post(f"/v1/events/{event_id}/direct-uploads", json=body, headers=auth(token))
    answer: dict[str, Any] = await resp.json()
    assert resp.status == 201, answer
    return answer


async def put_whole(upload: dict[str, Any], data: bytes) -> None:
    status, _ = await s3_put(upload["url"], data, upload["headers"])
    assert status == 200


async def complete(
    api: Client, token: str, upload_id: str, parts: list[dict[str, Any]] | None = None
) -> aiohttp.ClientResponse:
    body = {} if parts is None else {"parts": parts}
    return await api.post(
        f"/v1/direct-uploads/{upload_id}/complete", json=body, headers=auth(token)
    )

"""Raw tus requests, for the tests that check what the endpoint answers (real clients, tuspy
and tus-js-client, have tests of their own)."""

from __future__ import annotations

from typing import Any

from darkroom_ingest.tus import protocol

from tests.factories.api import Client, auth

TUS = {"Tus-Resumable": protocol.VERSION}


def meta(**pairs: str) -> str:
    """``Upload-Metadata`` of ``pairs``."""
    return protocol.format_metadata(pairs)


def url_of(api: Client, path: str = "/v1/tus/") -> str:
    return str(api.make_url(path))


async def create(
    api: Client,
    token: str,
    event_id: str | None,
    length: int | None,
    body: bytes | None = None,
    filename: str = "a.jpg",
    filetype: str = "image/jpeg",
    **headers: str,
) -> Any:
    """``POST /v1/tus/``; with ``body``, its bytes too (creation-with-upload)."""
    pairs = {"filename": filename, "filetype": filetype}
    if event_id is not None:
        pairs["event"] = event_id
    h = {**TUS, **auth(token), "Upload-Metadata": meta(**pairs), **headers}
    if length is not None:
        h["Upload-Length"] = str(length)
    if body is not None:
        h["Content-Type"] = protocol.OFFSET_OCTET_STREAM
    return await api.post("/v1/tus/", data=body, headers=h)


async def patch(api: Client, token: str, location: str, offset: int, body: bytes, **h: str) -> Any:
    headers = {
        **TUS,
        **auth(token),
        "Upload-Offset": str(offset),
        "Content-Type": protocol.OFFSET_OCTET_STREAM,
        **h,
    }
    return await api.patch(location, data=body, headers=headers)


async def head(api: Client, token: str, location: str) -> Any:
    return await api.head(location, headers={**TUS, **auth(token)})

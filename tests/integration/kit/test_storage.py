"""The S3 adapter against a real S3 API server (moto_server, or S3_ENDPOINT_URL)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from darkroom_kit.settings import CommonSettings
from darkroom_kit.storage import (
    MIB,
    ObjectNotFound,
    S3ObjectStore,
    StorageUnavailable,
    open_object_store,
)


@pytest.fixture
async def store(settings_kwargs: dict[str, Any]) -> AsyncIterator[S3ObjectStore]:
    async with open_object_store(CommonSettings(**settings_kwargs)) as s:
        await s.ensure_bucket()
        yield s


async def test_small_stream_is_one_put(store: S3ObjectStore) -> None:
    writer = store.writer("t/small", "image/jpeg", 5 * MIB)
    await writer.write(b"abc")
    await writer.write(b"def")
    info = await writer.close()
    assert info.size == 6
    assert await store.get_bytes("t/small") == b"abcdef"
    assert (await store.head("t/small")).content_type == "image/jpeg"


async def test_large_stream_is_multipart_and_byte_exact(store: S3ObjectStore) -> None:
    data = os.urandom(13 * MIB + 12345)
    writer = store.writer("t/large", "video/mp4", 5 * MIB)
    for start in range(0, len(data), 256 * 1024):
        await writer.write(data[start : start + 256 * 1024])
    info = await writer.close()
    assert info.size == len(data)
    stored = await store.get_bytes("t/large")
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
    assert await store.get_bytes("t/large", 10, 19) == data[10:20]


async def test_exact_multiple_of_part_size(store: S3ObjectStore) -> None:
    data = os.urandom(10 * MIB)
    writer = store.writer("t/exact", "application/octet-stream", 5 * MIB)
    await writer.write(data)
    await writer.close()
    assert await store.get_bytes("t/exact") == data


async def test_abort_leaves_nothing(store: S3ObjectStore) -> None:
    writer = store.writer("t/aborted", "image/jpeg", 5 * MIB)
    await writer.write(os.urandom(6 * MIB))
    await writer.abort()
    await writer.abort()
    with pytest.raises(ObjectNotFound):
        await store.head("t/aborted")


async def test_missing_objects_and_idempotent_delete(store: S3ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        await store.get_bytes("t/nope")
    await store.put_bytes("t/del", b"x", "text/plain")
    await store.delete_many(["t/del", "t/never-existed"])
    with pytest.raises(ObjectNotFound):
        await store.head("t/del")


async def test_delete_many_takes_odd_keys_and_more_than_one_request(store: S3ObjectStore) -> None:
    # Keys XML and URLs must escape, and more keys than one DeleteObjects request takes.
    odd = ["t/many/a & b <c>.jpg", "t/many/été 'quoted\".jpg", "t/many/plus+percent%20.jpg"]
    keys = odd + [f"t/many/{i:04d}" for i in range(1001)]
    await asyncio.gather(*(store.put_bytes(k, b"x", "text/plain") for k in keys))
    await store.put_bytes("t/many-kept", b"y", "text/plain")
    await store.delete_many(keys)
    assert await store.list_keys("t/many/") == []
    assert await store.get_bytes("t/many-kept") == b"y"


async def test_unreachable_server_is_unavailable(settings_kwargs: dict[str, Any]) -> None:
    from darkroom_dev.servers import free_port

    settings = CommonSettings(
        **{**settings_kwargs, "s3_endpoint_url": f"http://127.0.0.1:{free_port()}"}
    )
    async with open_object_store(settings) as dead:
        with pytest.raises(StorageUnavailable):
            await dead.put_bytes("k", b"x", "text/plain")


async def test_racing_writes_of_one_part_are_retried_and_succeed(store: S3ObjectStore) -> None:
    """A part body must be rewindable: the client retries a failed attempt (moto_server drops
    some of these racing requests, and a real network drops others)."""
    import asyncio

    from darkroom_kit.storage import PartBody, StoredPart

    data = os.urandom(5 * MIB)

    def body() -> PartBody:
        part = PartBody()
        part.append(data[:MIB])
        part.append(memoryview(data)[MIB:])
        return part

    for trial in range(5):
        upload_id = await store.create_multipart(f"t/race{trial}", "image/jpeg")
        parts = await asyncio.gather(
            *(store.upload_part(f"t/race{trial}", upload_id, 1, body()) for _ in range(3))
        )
        assert {p.etag for p in parts} == {parts[0].etag}
        await store.complete_multipart(
            f"t/race{trial}", upload_id, [StoredPart(1, parts[0].etag, len(data))]
        )
        assert await store.get_bytes(f"t/race{trial}") == data


async def test_hostile_keys_round_trip(store: S3ObjectStore) -> None:
    """Keys are quoted as botocore quotes them; the data path and the control plane agree."""
    key = "ev-1/originals/ü ph_1 file+(1)~=&?#%.jpg"
    data = os.urandom(6 * MIB)
    await store.put_bytes(key, data[:100], "image/jpeg")
    assert await store.get_bytes(key) == data[:100]
    assert (await store.head(key)).size == 100
    assert key in await store.list_keys("ev-1/")
    upload_id = await store.create_multipart(key + ".mp4", "video/mp4")
    first = await store.upload_part(key + ".mp4", upload_id, 1, data[: 5 * MIB])
    second = await store.upload_part(key + ".mp4", upload_id, 2, data[5 * MIB :])
    await store.complete_multipart(key + ".mp4", upload_id, [first, second])
    assert (
        await store.get_bytes(key + ".mp4", 5 * MIB - 2, 5 * MIB + 1)
        == data[5 * MIB - 2 : 5 * MIB + 2]
    )
    async with store.open_stream(key + ".mp4") as (info, chunks):
        assert info.size == len(data)
        assert info.content_type == "video/mp4"
        assert b"".join([c async for c in chunks]) == data
    await store.delete_many([key, key + ".mp4"])
    with pytest.raises(ObjectNotFound):
        await store.head(key)


async def test_a_range_past_the_end_is_a_storage_error(store: S3ObjectStore) -> None:
    from darkroom_kit.storage import StorageError

    await store.put_bytes("t/short", b"abc", "text/plain")
    with pytest.raises(StorageError) as caught:
        await store.get_bytes("t/short", 10, 20)
    assert not isinstance(caught.value, (ObjectNotFound, StorageUnavailable))


async def test_data_path_retries_throttling_and_refuses_the_rest(aiohttp_server: Any) -> None:
    """Against a server that answers like S3 under load: SlowDown twice, then the part."""
    from aiohttp import web
    from botocore.credentials import Credentials
    from darkroom_kit.storage import S3Http, StorageError, s3_http_session

    seen: list[tuple[str, str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((request.method, request.path_qs, request.headers.get("Authorization", "")))
        if request.path.endswith("/slow") and len(seen) <= 2:
            return web.Response(
                status=503, text="<Error><Code>SlowDown</Code><Message>later</Message></Error>"
            )
        if request.path.endswith("/gone"):
            return web.Response(
                status=404, text="<Error><Code>NoSuchUpload</Code><Message>gone</Message></Error>"
            )
        if request.path.endswith("/forbidden"):
            return web.Response(
                status=403, text="<Error><Code>AccessDenied</Code><Message>no</Message></Error>"
            )
        return web.Response(headers={"ETag": f'"e-{len(body)}"'})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    async with s3_http_session() as session:
        http = S3Http(session, str(server.make_url("")), "bk", Credentials("a", "b"), "us-east-1")
        async with http.request(
            "PUT", "slow", query={"partNumber": "1", "uploadId": "u"}, data=b"12345"
        ) as response:
            assert response.headers["ETag"] == '"e-5"'
        assert [m for m, _, _ in seen] == ["PUT", "PUT", "PUT"]
        # Each attempt is signed afresh, with the query it was sent with.
        assert all(path == "/bk/slow?partNumber=1&uploadId=u" for _, path, _ in seen)
        assert all(auth.startswith("AWS4-HMAC-SHA256 Credential=a/") for _, _, auth in seen)
        seen.clear()
        with pytest.raises(StorageError, match="AccessDenied") as caught:
            await http.read("forbidden")
        assert not isinstance(caught.value, StorageUnavailable)
        assert len(seen) == 1  # a refusal is not retried
        with pytest.raises(ObjectNotFound, match="NoSuchUpload"):
            await http.read("gone")
        await server.close()
        with pytest.raises(StorageUnavailable):
            await http.read("anything")

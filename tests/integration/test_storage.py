"""The S3 adapter against a real S3 API server (moto_server, or S3_ENDPOINT_URL)."""

from __future__ import annotations

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

"""Helpers of the archive tests: an object store in memory (for what would take too many
requests against a server, such as 65,536 entries), big objects put part by part, and an
archive read back into a file that :mod:`zipfile` can open."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from darkroom_kit.storage import (
    MIB,
    ObjectInfo,
    ObjectNotFound,
    OpenMultipart,
    S3ObjectStore,
    StoredPart,
)

CHUNK = 256 * 1024


@dataclass
class MemoryWriter:
    """A :class:`~darkroom_kit.storage.StreamingWriter` stand-in that keeps the bytes."""

    store: MemoryStore
    key: str
    part_size: int
    chunks: list[bytes] = field(default_factory=list)
    aborted: bool = False

    async def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    async def close(self) -> ObjectInfo:
        data = b"".join(self.chunks)
        self.store.objects[self.key] = data
        return ObjectInfo(self.key, len(data), hashlib.md5(data).hexdigest(), "application/zip")

    async def abort(self) -> None:
        self.aborted = True
        self.chunks = []


@dataclass
class MemoryStore:
    """What :func:`darkroom_kit.archive.write_archive` needs of a store, in memory; objects
    stream in chunks of 256 KiB, as the S3 store's do."""

    objects: dict[str, bytes] = field(default_factory=dict)
    writers: list[MemoryWriter] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def open_stream(self, key: str) -> AsyncIterator[tuple[ObjectInfo, AsyncIterator[bytes]]]:
        if key not in self.objects:
            raise ObjectNotFound(key)
        self.opened.append(key)
        data = self.objects[key]

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(data), CHUNK):
                yield data[start : start + CHUNK]

        yield ObjectInfo(key, len(data), "", "application/octet-stream"), chunks()

    def writer(self, key: str, content_type: str, part_size: int) -> MemoryWriter:
        writer = MemoryWriter(self, key, part_size)
        self.writers.append(writer)
        return writer

    async def iter_multipart_uploads(self, prefix: str) -> AsyncIterator[Sequence[OpenMultipart]]:
        yield []

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        return None


async def put_large(
    store: S3ObjectStore, key: str, size: int, *, block: int = 8 * MIB
) -> tuple[int, str]:
    """An object of ``size`` bytes put as a multipart upload of ``block``-sized parts, cycling
    through four random blocks (made once: a big object costs no more memory than they do)
    and a random tail; its size and SHA-256."""
    blocks = [os.urandom(block) for _ in range(4)]
    digest = hashlib.sha256()
    upload_id = await store.create_multipart(key, "video/mp4")
    parts: list[StoredPart] = []
    try:
        for number, start in enumerate(range(0, size, block), start=1):
            data = blocks[number % 4][: min(block, size - start)]
            digest.update(data)
            parts.append(await store.upload_part(key, upload_id, number, data))
        await store.complete_multipart(key, upload_id, parts)
    except BaseException:
        await store.abort_multipart(key, upload_id)
        raise
    return size, digest.hexdigest()


async def download(store: S3ObjectStore, key: str, path: Path) -> str:
    """The object written to ``path`` as it streams; its SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        async with store.open_stream(key) as (_, chunks):
            async for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
    return digest.hexdigest()


async def open_uploads(store: S3ObjectStore, prefix: str) -> list[str]:
    """The keys of the multipart uploads still open under ``prefix``."""
    return [u.key async for page in store.iter_multipart_uploads(prefix) for u in page]

"""S3 object storage (MinIO or any S3 API) through aiobotocore.

Vendor errors are translated into :class:`ObjectNotFound` and :class:`StorageUnavailable`, so the
services never import botocore.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiohttp import web
from botocore.exceptions import BotoCoreError, ClientError

from darkroom_kit.settings import CommonSettings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

MIB = 1024 * 1024
# S3's minimum for every part but the last.
MIN_PART_SIZE = 5 * MIB


class StorageError(Exception):
    """Base of the storage errors the domain understands."""


class ObjectNotFound(StorageError):
    """The key (or multipart upload) does not exist."""


class StorageUnavailable(StorageError):
    """The store did not answer or answered with a server error: worth retrying later."""


_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchUpload", "NoSuchBucket"}


@contextlib.contextmanager
def _translated() -> Any:
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND_CODES:
            raise ObjectNotFound(code) from exc
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status >= 500 or status == 0 or code in {"SlowDown", "RequestTimeout"}:
            raise StorageUnavailable(f"{code}: {exc}") from exc
        raise StorageError(f"{code}: {exc}") from exc
    except (TimeoutError, BotoCoreError, OSError) as exc:
        raise StorageUnavailable(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    content_type: str


@dataclass(frozen=True, slots=True)
class StoredPart:
    number: int
    etag: str
    size: int


class S3ObjectStore:
    """The object store port's S3 adapter. One per process; safe to share between tasks."""

    def __init__(self, client: S3Client, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

    async def ensure_bucket(self) -> None:
        with _translated():
            try:
                await self._client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket"}:
                    raise
            try:
                await self._client.create_bucket(Bucket=self.bucket)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise

    async def ping(self) -> None:
        with _translated():
            await self._client.head_bucket(Bucket=self.bucket)

    async def put_bytes(
        self, key: str, data: bytes | bytearray | PartBody, content_type: str
    ) -> ObjectInfo:
        with _translated():
            resp = await self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,  # type: ignore[arg-type]  # botocore accepts bytearray
                ContentType=content_type,
            )
        return ObjectInfo(key, len(data), resp["ETag"].strip('"'), content_type)

    async def head(self, key: str) -> ObjectInfo:
        with _translated():
            resp = await self._client.head_object(Bucket=self.bucket, Key=key)
        return ObjectInfo(
            key,
            resp["ContentLength"],
            resp["ETag"].strip('"'),
            resp.get("ContentType", "application/octet-stream"),
        )

    async def get_bytes(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The whole object, or bytes ``start..end`` inclusive (a ranged GET)."""
        kwargs: dict[str, Any] = {}
        if start is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end}"
        with _translated():
            resp = await self._client.get_object(Bucket=self.bucket, Key=key, **kwargs)
            async with resp["Body"] as body:
                return await body.read()

    @contextlib.asynccontextmanager
    async def open_stream(self, key: str) -> AsyncIterator[tuple[ObjectInfo, AsyncIterator[bytes]]]:
        with _translated():
            resp = await self._client.get_object(Bucket=self.bucket, Key=key)
        info = ObjectInfo(
            key,
            resp["ContentLength"],
            resp["ETag"].strip('"'),
            resp.get("ContentType", "application/octet-stream"),
        )
        body = resp["Body"]

        async def chunks() -> AsyncIterator[bytes]:
            with _translated():
                async for chunk in body.iter_chunks(256 * 1024):
                    yield chunk

        try:
            yield info, chunks()
        finally:
            body.close()

    async def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with _translated():
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    async def presigned_get(self, key: str, expires_seconds: int = 3600) -> str:
        """A URL that reads the object without credentials, for tools such as ffmpeg that seek
        with ranged GETs instead of downloading the whole file."""
        with _translated():
            url: str = await self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=expires_seconds,
            )
        return url

    async def delete_many(self, keys: list[str]) -> None:
        """Delete objects; a key that is already gone is not an error."""
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            if not batch:
                continue
            with _translated():
                await self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )

    # Multipart primitives: a streamed upload here, chunked uploads in upload-ingest.
    async def create_multipart(self, key: str, content_type: str) -> str:
        with _translated():
            resp = await self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType=content_type
            )
        return resp["UploadId"]

    async def upload_part(
        self, key: str, upload_id: str, number: int, data: bytes | bytearray | PartBody
    ) -> StoredPart:
        with _translated():
            resp = await self._client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,  # type: ignore[arg-type]  # botocore accepts bytearray
            )
        return StoredPart(number, resp["ETag"].strip('"'), len(data))

    async def complete_multipart(self, key: str, upload_id: str, parts: list[StoredPart]) -> str:
        with _translated():
            resp = await self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"ETag": f'"{p.etag}"', "PartNumber": p.number} for p in parts]
                },
            )
        return resp.get("ETag", "").strip('"')

    async def open_multipart_uploads(self, prefix: str) -> list[str]:
        """Ids of the multipart uploads under ``prefix`` that are neither completed nor aborted."""
        with _translated():
            resp = await self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [u["UploadId"] for u in resp.get("Uploads", [])]

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(ObjectNotFound), _translated():
            await self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )

    def writer(self, key: str, content_type: str, part_size: int) -> StreamingWriter:
        return StreamingWriter(self, key, content_type, part_size)


class PartBody:
    """One part's bytes, kept as the chunks they arrived in.

    botocore takes it as a file-like body (it has ``read`` and a length); aiohttp sends it as an
    async iterable, chunk by chunk. So the bytes are never copied into one buffer, never sliced,
    and never joined with the request headers: the only copies left are the kernel's.
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._position = 0  # for read(); iteration always starts at the first chunk

    def append(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return True  # an empty part is still a body (botocore tests truthiness for "no body")

    def read(self, size: int = -1) -> bytes:
        """File-like reading, for code that insists on it (aiohttp iterates instead)."""
        end = self._size if size is None or size < 0 else min(self._size, self._position + size)
        out, start = [], 0
        for chunk in self._chunks:
            stop = start + len(chunk)
            if stop > self._position and start < end:
                out.append(chunk[max(0, self._position - start) : end - start])
            start = stop
        self._position = end
        return b"".join(out)

    # botocore rewinds a body before it retries a request. Without these a failed attempt could
    # not be retried.
    def seek(self, offset: int, whence: int = 0) -> int:
        if offset != 0 or whence != 0:
            raise OSError("a part body can only be rewound to its start")
        self._position = 0
        return 0

    def tell(self) -> int:
        return self._position

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


class StreamingWriter:
    """Writes a stream of unknown length to one object with bounded memory.

    Bytes are gathered into parts of ``part_size``; each full part is uploaded in the background
    while the next one fills, so reading the client and writing to S3 overlap. At most two parts
    are held at once. A stream shorter than one part becomes a single PUT. A part is a
    :class:`PartBody`: the chunks as they arrived, never joined.
    """

    def __init__(self, store: S3ObjectStore, key: str, content_type: str, part_size: int) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError("part_size below the S3 minimum of 5 MiB")
        self._store = store
        self.key = key
        self._content_type = content_type
        self._part_size = part_size
        self._buffer = PartBody()
        self._upload_id: str | None = None
        self._parts: list[StoredPart] = []
        self._in_flight: asyncio.Task[StoredPart] | None = None
        self.size = 0

    async def write(self, chunk: bytes) -> None:
        self._buffer.append(chunk)
        self.size += len(chunk)
        if len(self._buffer) >= self._part_size:
            await self._flush_part()

    async def _flush_part(self) -> None:
        data, self._buffer = self._buffer, PartBody()
        if self._upload_id is None:
            self._upload_id = await self._store.create_multipart(self.key, self._content_type)
        await self._await_in_flight()
        number = len(self._parts) + 1
        self._in_flight = asyncio.create_task(
            self._store.upload_part(self.key, self._upload_id, number, data)
        )

    async def _await_in_flight(self) -> None:
        if self._in_flight is not None:
            task, self._in_flight = self._in_flight, None
            self._parts.append(await task)

    async def close(self) -> ObjectInfo:
        """Finish the object and return what was stored."""
        if self._upload_id is None:
            return await self._store.put_bytes(self.key, self._buffer, self._content_type)
        if len(self._buffer):
            await self._flush_part()
        await self._await_in_flight()
        etag = await self._store.complete_multipart(self.key, self._upload_id, self._parts)
        return ObjectInfo(self.key, self.size, etag, self._content_type)

    async def abort(self) -> None:
        """Drop everything written so far; safe to call at any point, also twice."""
        self._buffer = PartBody()
        if self._in_flight is not None:
            task, self._in_flight = self._in_flight, None
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            await self._store.abort_multipart(self.key, upload_id)


OBJECT_STORE: web.AppKey[S3ObjectStore] = web.AppKey("object_store", S3ObjectStore)


def s3_client_config(max_connections: int = 32) -> AioConfig:
    # Payload signing and the default CRC checksums each cost a full pass over every byte; over
    # plain HTTP botocore would SHA-256 every body. UNSIGNED-PAYLOAD keeps the API's CPU per GiB
    # low; integrity is covered by the content hash darkroom computes itself.
    return AioConfig(
        signature_version="s3v4",
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=max_connections,
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )


@contextlib.asynccontextmanager
async def open_object_store(settings: CommonSettings) -> AsyncIterator[S3ObjectStore]:
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key.get_secret_value(),
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
        config=s3_client_config(),
    ) as client:
        yield S3ObjectStore(client, settings.s3_bucket)


def object_store_ctx(
    settings: CommonSettings, *, create_bucket: bool = False
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_object_store(settings) as store:
            if create_bucket:
                await store.ensure_bucket()
            app[OBJECT_STORE] = store
            yield

    return ctx

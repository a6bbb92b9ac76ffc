"""S3 object storage (MinIO or any S3 API).

The data path (GET, HEAD, PUT, UploadPart, DeleteObjects, ListParts, CompleteMultipartUpload)
is :class:`S3Http`: requests signed with botocore's SigV4 signer and sent over one aiohttp
session. The control plane (buckets, listing objects and uploads, creating and aborting multipart
uploads, presigning GETs) goes through aiobotocore.
Vendor errors are translated into :class:`ObjectNotFound` and :class:`StorageUnavailable`, so the
services never import botocore or see an HTTP status from S3.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiohttp import web
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError
from yarl import URL

from darkroom_kit.settings import CommonSettings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

T = TypeVar("T")

MIB = 1024 * 1024
# S3's minimum for every part but the last.
MIN_PART_SIZE = 5 * MIB
# The largest object one CopyObject makes; bigger ones are copied part by part (UploadPartCopy).
MAX_COPY_OBJECT = 5 * 1024 * MIB
# Parts of a multipart copy: few round trips, and 10,000 of them reach 5 TiB (S3's largest).
COPY_PART_SIZE = 512 * MIB
MAX_PARTS = 10_000


class StorageError(Exception):
    """Base of the storage errors the domain understands."""


class ObjectNotFound(StorageError):
    """The key (or multipart upload) does not exist."""


class StorageUnavailable(StorageError):
    """The store did not answer or answered with a server error: worth retrying later."""


class PreconditionFailed(StorageError):
    """A conditional request's condition did not hold: the object is not the version asked for
    (it changed since it was listed)."""


_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchUpload", "NoSuchBucket"}


# Worth another try: the store is busy or briefly broken, not the request wrong.
_RETRY_CODES = {"SlowDown", "RequestTimeout"}


def _storage_error(status: int, code: str, detail: str) -> StorageError:
    """What an S3 error answer means to the domain, whichever client got it."""
    if status == 404 or code in _NOT_FOUND_CODES:
        return ObjectNotFound(code)
    if status == 412 or code == "PreconditionFailed":
        return PreconditionFailed(f"{code}: {detail}")
    if status >= 500 or status == 0 or code in _RETRY_CODES:
        return StorageUnavailable(f"{code}: {detail}")
    return StorageError(f"{code}: {detail}")


@contextlib.contextmanager
def _translated() -> Any:
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        raise _storage_error(status, code, str(exc)) from exc
    except (TimeoutError, BotoCoreError, OSError) as exc:
        raise StorageUnavailable(str(exc)) from exc


async def _translated_pages(pages: Any) -> AsyncIterator[Any]:
    """A paginator's pages with vendor errors translated; the caller's own code between pages
    runs outside the translation."""
    iterator = aiter(pages)
    while True:
        with _translated():
            try:
                page = await anext(iterator)
            except StopAsyncIteration:
                return
        yield page


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


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


@dataclass(frozen=True, slots=True)
class PresignedRequest:
    """A request a client without credentials may make until the URL expires. Its headers are
    the ones the client sets, signed: sent otherwise, S3 refuses the request."""

    method: str
    url: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class ListedObject:
    key: str
    size: int
    last_modified_ms: int
    # As listed, quotes removed; "" where a caller made one by hand.
    etag: str = ""


@dataclass(frozen=True, slots=True)
class OpenMultipart:
    """A multipart upload neither completed nor aborted, as ListMultipartUploads reports it."""

    key: str
    upload_id: str
    initiated_ms: int


_ERROR_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_ERROR_MESSAGE = re.compile(rb"<Message>([^<]{0,300})</Message>")


class S3Http:
    """Object requests signed with botocore's own SigV4 signer and sent straight over aiohttp.

    aiobotocore costs about 2.2 ms of CPU per call beyond the request itself (event hooks,
    endpoint rules, the user-agent string, response parsing): 4.6 against 2.4 ms a call for the
    same signed ranged GET, side by side on this project's machine (``make bench-s3``). The data
    path pays that for every photo fetched, every variant stored and every 8 MiB chunk, so it
    skips it. The
    signature is botocore's (``tests/unit/test_s3_signing.py`` checks it equals the client's);
    the payload is not signed (``UNSIGNED-PAYLOAD``), as the client is configured, so no body is
    hashed twice. Retries follow botocore's standard mode: 3 attempts, jittered exponential
    backoff, on connection errors, 5xx and throttling.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint_url: str,
        bucket: str,
        credentials: Credentials,
        region: str,
        *,
        attempts: int = 3,
        public_endpoint_url: str | None = None,
    ) -> None:
        self._session = session
        self._base = f"{endpoint_url.rstrip('/')}/{quote(bucket, safe='')}/"
        # Where clients reach the store, when not where the services do: presigned URLs name it
        # (their host is signed).
        public = (public_endpoint_url or endpoint_url).rstrip("/")
        self._public_base = f"{public}/{quote(bucket, safe='')}/"
        self._presigner = _QuerySigner(credentials, region, self._public_base)
        self._signer = S3SigV4Auth(credentials, "s3", region)
        self._config = s3_client_config()
        self._attempts = attempts

    def sign(
        self, method: str, key: str, query: dict[str, str], headers: dict[str, str]
    ) -> tuple[URL, dict[str, str]]:
        # The URL is sent exactly as signed (encoded=True stops yarl from re-quoting it).
        url = _object_url(self._base, key, query)
        request = AWSRequest(method=method, url=url, headers=headers)
        request.context["client_config"] = self._config
        self._signer.add_auth(request)
        return URL(url, encoded=True), dict(request.headers.items())

    def presign(
        self,
        method: str,
        key: str,
        query: dict[str, str],
        headers: dict[str, str],
        expires_seconds: int,
    ) -> str:
        """A URL on the public endpoint that makes this request without credentials for
        ``expires_seconds`` (SigV4 query authentication): its host, its query and every header
        given are signed, the payload is not."""
        return self._presigner.url(method, key, query, headers, expires_seconds)

    async def _send(
        self,
        method: str,
        key: str,
        query: dict[str, str] | None,
        headers: dict[str, str] | None,
        data: bytes | bytearray | PartBody | None,
    ) -> aiohttp.ClientResponse:
        """One attempt: a successful response, not yet read, or the storage error it stands for."""
        url, signed = self.sign(method, key, query or {}, headers or {})
        if data is not None:
            # A part body is an async iterable of unknown length to aiohttp, which would send it
            # chunked; S3 wants the length up front. Not signed, as botocore does not.
            signed["Content-Length"] = str(len(data))
        try:
            response = await self._session.request(method, url, headers=signed, data=data)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StorageUnavailable(f"{method} {key}: {exc!r}") from exc
        if response.status < 300:
            return response
        try:
            raise await _error_of(response)
        finally:
            response.release()

    async def _retried(self, attempt_once: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(1, self._attempts):
            try:
                return await attempt_once()
            except StorageUnavailable:
                await asyncio.sleep(random.random() * min(20.0, 2.0 ** (attempt - 1)))
        return await attempt_once()

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        key: str,
        *,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | bytearray | PartBody | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A successful response to read as it comes; retried until its headers are in."""
        response = await self._retried(lambda: self._send(method, key, query, headers, data))
        try:
            yield response
        finally:
            response.release()

    async def read(self, key: str, *, headers: dict[str, str] | None = None) -> bytes:
        """A GET's whole body; a connection lost mid-body is retried like any other."""

        async def attempt_once() -> bytes:
            response = await self._send("GET", key, None, headers, None)
            try:
                return await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise StorageUnavailable(f"GET {key}: {exc!r}") from exc
            finally:
                response.release()

        return await self._retried(attempt_once)


_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _delete_request(keys: list[str]) -> bytes:
    """A quiet DeleteObjects body: only the keys that could not be deleted are answered."""
    request = ElementTree.Element("Delete", xmlns=_S3_NS[1:-1])
    ElementTree.SubElement(request, "Quiet").text = "true"
    for key in keys:
        ElementTree.SubElement(ElementTree.SubElement(request, "Object"), "Key").text = key
    body: bytes = ElementTree.tostring(request, encoding="utf-8", xml_declaration=True)
    return body


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _QuerySigner:
    """SigV4 query signing (presigned URLs) as botocore's ``S3SigV4QueryAuth`` does it, with the
    signing key kept for the day it is valid, and the canonical request made of plain strings.

    Hand-written because a direct upload presigns every part: botocore took 153 to 167 µs a URL
    (the request object, its hooks, four URL splits, five HMACs), this takes about 19 µs, a
    fifth of what a 1 GiB upload costs the API (``make bench-direct``). The URLs are byte for
    byte botocore's: ``tests/unit/kit/test_presign.py`` compares them at a frozen instant."""

    def __init__(self, credentials: Credentials, region: str, public_base: str) -> None:
        self._access_key = credentials.access_key
        self._secret_key = credentials.secret_key
        self._region = region
        self._base = public_base
        split = urlsplit(public_base)
        self._path_prefix = split.path
        # The host as signed: botocore leaves a scheme's default port out.
        default_port = {"http": 80, "https": 443}.get(split.scheme)
        host = split.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        self._host = host if split.port in (None, default_port) else f"{host}:{split.port}"
        self._day = ""
        self._key = b""

    def _signing_key(self, day: str) -> bytes:
        if day != self._day:
            key = hmac.new(f"AWS4{self._secret_key}".encode(), day.encode(), hashlib.sha256)
            digest = key.digest()
            for part in (self._region, "s3", "aws4_request"):
                digest = hmac.new(digest, part.encode(), hashlib.sha256).digest()
            self._day, self._key = day, digest
        return self._key

    def url(
        self,
        method: str,
        key: str,
        query: dict[str, str],
        headers: dict[str, str],
        expires_seconds: int,
    ) -> str:
        stamp = _utc_now().strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        scope = f"{day}/{self._region}/s3/aws4_request"
        signed = {"host": self._host}
        for name, value in headers.items():
            signed[name.lower()] = " ".join(value.split())
        names = sorted(signed)
        signed_names = ";".join(names)
        params = {
            **query,
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": f"{self._access_key}/{scope}",
            "X-Amz-Date": stamp,
            "X-Amz-Expires": str(expires_seconds),
            "X-Amz-SignedHeaders": signed_names,
        }
        encoded = [(quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in params.items()]
        path = quote(key, safe="/~")
        canonical = "\n".join(
            [
                method,
                self._path_prefix + path,
                "&".join(f"{k}={v}" for k, v in sorted(encoded)),
                "".join(f"{name}:{signed[name]}\n" for name in names),
                signed_names,
                "UNSIGNED-PAYLOAD",
            ]
        )
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                stamp,
                scope,
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256)
        query_string = "&".join(f"{k}={v}" for k, v in encoded)
        return f"{self._base}{path}?{query_string}&X-Amz-Signature={signature.hexdigest()}"


def _object_url(base: str, key: str, query: dict[str, str]) -> str:
    # The same encoding botocore's serializer uses for keys, and AWS's for query values.
    url = base + quote(key, safe="/~")
    if query:
        url += "?" + "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
        )
    return url


async def _error_of(response: aiohttp.ClientResponse) -> StorageError:
    """The storage error an S3 error response stands for."""
    try:
        body = await response.read()
    except (aiohttp.ClientError, TimeoutError):
        body = b""
    found = _ERROR_CODE.search(body)
    code = found.group(1).decode(errors="replace") if found else str(response.status)
    found = _ERROR_MESSAGE.search(body)
    message = found.group(1).decode(errors="replace") if found else response.reason or ""
    return _storage_error(response.status, code, message)


def _etag(response: aiohttp.ClientResponse) -> str:
    return response.headers.get("ETag", "").strip('"')


def _object_info(key: str, response: aiohttp.ClientResponse) -> ObjectInfo:
    return ObjectInfo(
        key,
        int(response.headers.get("Content-Length", 0)),
        _etag(response),
        response.headers.get("Content-Type", "application/octet-stream"),
    )


class S3ObjectStore:
    """The object store port's S3 adapter. One per process; safe to share between tasks."""

    def __init__(self, client: S3Client, http: S3Http, bucket: str) -> None:
        self._client = client
        self._http = http
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
        headers = {"Content-Type": content_type}
        async with self._http.request("PUT", key, headers=headers, data=data) as response:
            return ObjectInfo(key, len(data), _etag(response), content_type)

    async def head(self, key: str) -> ObjectInfo:
        async with self._http.request("HEAD", key) as response:
            return _object_info(key, response)

    async def get_bytes(
        self,
        key: str,
        start: int | None = None,
        end: int | None = None,
        *,
        if_match: str | None = None,
    ) -> bytes:
        """The whole object, or bytes ``start..end`` inclusive (a ranged GET). With
        ``if_match`` (an ETag): only of that version, else :class:`PreconditionFailed`."""
        headers: dict[str, str] = {}
        if start is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        if if_match:
            headers["If-Match"] = f'"{if_match}"'
        return await self._http.read(key, headers=headers)

    @contextlib.asynccontextmanager
    async def open_stream(
        self,
        key: str,
        *,
        if_match: str | None = None,
        byte_range: tuple[int, int] | None = None,
    ) -> AsyncIterator[tuple[ObjectInfo, AsyncIterator[bytes]]]:
        """The object's bytes as they come (``byte_range``: bytes first..last inclusive; the
        info's size is then the range's)."""
        headers = {"If-Match": f'"{if_match}"'} if if_match else {}
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        async with self._http.request("GET", key, headers=headers or None) as response:

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for chunk in response.content.iter_chunked(256 * 1024):
                        yield chunk
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise StorageUnavailable(f"GET {key}: {exc!r}") from exc

            yield _object_info(key, response), chunks()

    async def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        async for page in self.iter_objects(prefix):
            keys.extend(obj.key for obj in page)
        return keys

    async def iter_objects(
        self, prefix: str, page_size: int = 1000, *, start_after: str = ""
    ) -> AsyncIterator[list[ListedObject]]:
        """The objects under ``prefix``, one ListObjectsV2 page at a time (continuation tokens),
        so a caller never holds more than one page of a big bucket; keys in S3's (byte) order,
        from the first after ``start_after`` (a walk resumed where it stopped)."""
        paginator = self._client.get_paginator("list_objects_v2")
        pages = (
            paginator.paginate(
                Bucket=self.bucket,
                Prefix=prefix,
                StartAfter=start_after,
                PaginationConfig={"PageSize": page_size},
            )
            if start_after
            else paginator.paginate(
                Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
            )
        )
        async for page in _translated_pages(pages):
            yield [
                ListedObject(
                    o["Key"],
                    int(o.get("Size", 0)),
                    _ms(o["LastModified"]),
                    str(o.get("ETag", "")).strip('"'),
                )
                for o in page.get("Contents", [])
            ]

    async def copy_from(
        self,
        source_bucket: str,
        source_key: str,
        key: str,
        size: int,
        content_type: str,
        *,
        if_match: str | None = None,
    ) -> str:
        """A server-side copy of ``source_bucket/source_key`` (``size`` bytes) to ``key`` of
        this store's bucket, on the same S3 endpoint: the bytes never pass through this process.
        CopyObject up to 5 GiB, UploadPartCopy beyond (S3's limit of one CopyObject). With
        ``if_match``: only of that version (``x-amz-copy-source-if-match``), else
        :class:`PreconditionFailed` and nothing is stored. Answers the new object's ETag.

        The request is signed with this store's credentials, which must be allowed to read the
        source bucket."""
        source = quote(f"{source_bucket}/{source_key}", safe="/~")
        condition = {"x-amz-copy-source-if-match": f'"{if_match}"'} if if_match else {}
        if size <= MAX_COPY_OBJECT:
            headers = {
                "x-amz-copy-source": source,
                "x-amz-metadata-directive": "REPLACE",
                "Content-Type": content_type,
                **condition,
            }
            answer = await self._xml("PUT", key, {}, None, headers)
            return answer.findtext("{*}ETag", "").strip('"')
        part_size = max(COPY_PART_SIZE, -(-size // MAX_PARTS))
        upload_id = await self.create_multipart(key, content_type)
        try:
            parts: list[StoredPart] = []
            for number, start in enumerate(range(0, size, part_size), start=1):
                end = min(size, start + part_size) - 1
                headers = {
                    "x-amz-copy-source": source,
                    "x-amz-copy-source-range": f"bytes={start}-{end}",
                    **condition,
                }
                query = {"partNumber": str(number), "uploadId": upload_id}
                answer = await self._xml("PUT", key, query, None, headers)
                etag = answer.findtext("{*}ETag", "").strip('"')
                parts.append(StoredPart(number, etag, end - start + 1))
            return await self.complete_multipart(key, upload_id, parts)
        except BaseException:
            with contextlib.suppress(StorageError):
                await self.abort_multipart(key, upload_id)
            raise

    async def iter_multipart_uploads(
        self, prefix: str, page_size: int = 1000
    ) -> AsyncIterator[list[OpenMultipart]]:
        """The open multipart uploads under ``prefix``, a page at a time (key and upload id
        markers)."""
        paginator = self._client.get_paginator("list_multipart_uploads")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
        )
        async for page in _translated_pages(pages):
            yield [
                OpenMultipart(u["Key"], u["UploadId"], _ms(u["Initiated"]))
                for u in page.get("Uploads", [])
            ]

    async def last_part_ms(self, key: str, upload_id: str) -> int | None:
        """When the newest part of a multipart upload was stored (None: no part yet). An upload
        still receiving parts is alive however long ago it began. ObjectNotFound: it is gone."""
        newest: int | None = None
        async for _, at in self._iter_parts(key, upload_id):
            newest = at if newest is None else max(newest, at)
        return newest

    async def _iter_parts(self, key: str, upload_id: str) -> AsyncIterator[tuple[StoredPart, int]]:
        """Each part S3 holds of a multipart upload, with when it was stored: ListParts pages
        over :class:`S3Http` (aiobotocore took 16 ms of CPU to parse the page of a 1 GiB
        upload's 128 parts, a fifth of what a direct upload costs the API; ``make
        bench-direct``)."""
        marker = "0"
        while True:
            page = await self._xml(
                "GET", key, {"uploadId": upload_id, "part-number-marker": marker}
            )
            for part in page.iterfind("{*}Part"):
                yield (
                    StoredPart(
                        int(part.findtext("{*}PartNumber", "0")),
                        part.findtext("{*}ETag", "").strip('"'),
                        int(part.findtext("{*}Size", "0")),
                    ),
                    _ms(datetime.fromisoformat(part.findtext("{*}LastModified", ""))),
                )
            next_marker = page.findtext("{*}NextPartNumberMarker", "")
            if page.findtext("{*}IsTruncated") != "true" or next_marker in ("", marker):
                return
            marker = next_marker

    async def _xml(
        self,
        method: str,
        key: str,
        query: dict[str, str],
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> ElementTree.Element:
        """An S3 request whose answer is XML, parsed; an ``<Error>`` answered with 200 (as
        CompleteMultipartUpload may, after it began) is raised like any other."""
        async with self._http.request(
            method, key, query=query, headers=headers, data=body
        ) as response:
            try:
                answer = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise StorageUnavailable(f"{method} {key}: {exc!r}") from exc
            status = response.status
        try:
            root = ElementTree.fromstring(answer)
        except ElementTree.ParseError as exc:
            raise StorageUnavailable(f"{method} {key}: not XML: {answer[:200]!r}") from exc
        # Namespaces are matched as any ({*}): S3 APIs differ in whether they name one.
        if root.tag.rpartition("}")[2] == "Error":
            code = root.findtext("{*}Code") or root.findtext("Code") or ""
            message = root.findtext("{*}Message") or root.findtext("Message") or ""
            raise _storage_error(500 if code == "InternalError" else status, code, message)
        return root

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

    def presigned_put(
        self, key: str, content_type: str, content_length: int, expires_seconds: int
    ) -> PresignedRequest:
        """A PUT of exactly ``content_length`` bytes of ``content_type`` to ``key``, for a client
        without credentials. Content-Length is signed but left out of the headers to send: every
        HTTP client sets it from the body (browsers refuse to let a script set it)."""
        content = {"Content-Type": content_type}
        url = self._http.presign(
            "PUT", key, {}, {**content, "Content-Length": str(content_length)}, expires_seconds
        )
        return PresignedRequest("PUT", url, content)

    def presigned_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        expires_seconds: int,
        checksum_crc32c: str | None = None,
    ) -> PresignedRequest:
        """A PUT of part ``number`` of a multipart upload, for a client without credentials;
        with ``checksum_crc32c`` (base64), S3 keeps the part only if its bytes have it."""
        headers = {} if checksum_crc32c is None else {"x-amz-checksum-crc32c": checksum_crc32c}
        query = {"partNumber": str(number), "uploadId": upload_id}
        url = self._http.presign("PUT", key, query, headers, expires_seconds)
        return PresignedRequest("PUT", url, headers)

    async def list_parts(self, key: str, upload_id: str) -> list[StoredPart]:
        """The parts S3 holds of a multipart upload, by number. ObjectNotFound: it is gone
        (completed or aborted)."""
        parts = [part async for part, _ in self._iter_parts(key, upload_id)]
        return sorted(parts, key=lambda p: p.number)

    async def delete_many(self, keys: list[str]) -> None:
        """Delete objects; a key that is already gone is not an error.

        One DeleteObjects request per 1,000 keys over :class:`S3Http`: a tus upload sent in
        small PATCHes deletes its pieces once a part, and aiobotocore's 2.5 ms of CPU a call
        was a tenth of such a PATCH's cost (``make bench-tus``)."""
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            if batch:
                await self._delete_batch(batch)

    async def _delete_batch(self, keys: list[str]) -> None:
        body = _delete_request(keys)
        headers = {
            "Content-Type": "application/xml",
            # S3 refuses a DeleteObjects without a checksum of its body.
            "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode(),
        }
        answer = await self._xml("POST", "", {"delete": ""}, body, headers)
        # DeleteObjects answers 200 even when some keys were not deleted; a caller that goes on
        # as if they were would drop the record that says they exist.
        failed = answer.findall("{*}Error")
        if failed:
            first = failed[0]
            code = first.findtext("{*}Code", "")
            raise _storage_error(
                500 if code == "InternalError" else 400,
                code,
                f"{len(failed)} of {len(keys)} key(s) not deleted, first "
                f"{first.findtext('{*}Key', '')}: {first.findtext('{*}Message', '')}",
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
        query = {"partNumber": str(number), "uploadId": upload_id}
        async with self._http.request("PUT", key, query=query, data=data) as response:
            return StoredPart(number, _etag(response), len(data))

    async def complete_multipart(self, key: str, upload_id: str, parts: list[StoredPart]) -> str:
        """Join the parts; the new object's ETag. Over :class:`S3Http`, for the reason
        :meth:`_iter_parts` gives (5 ms of CPU through aiobotocore for 128 parts)."""
        request = ElementTree.Element("CompleteMultipartUpload", xmlns=_S3_NS[1:-1])
        for part in parts:
            entry = ElementTree.SubElement(request, "Part")
            ElementTree.SubElement(entry, "PartNumber").text = str(part.number)
            ElementTree.SubElement(entry, "ETag").text = f'"{part.etag}"'
        body = ElementTree.tostring(request, encoding="utf-8", xml_declaration=True)
        answer = await self._xml(
            "POST",
            key,
            {"uploadId": upload_id},
            body,
            {"Content-Type": "application/xml"},
        )
        return answer.findtext("{*}ETag", "").strip('"')

    async def open_multipart_uploads(self, prefix: str) -> list[str]:
        """Ids of the multipart uploads under ``prefix`` that are neither completed nor aborted."""
        ids: list[str] = []
        async for page in self.iter_multipart_uploads(prefix):
            ids.extend(u.upload_id for u in page)
        return ids

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(ObjectNotFound), _translated():
            await self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )

    def writer(self, key: str, content_type: str, part_size: int) -> StreamingWriter:
        return StreamingWriter(self, key, content_type, part_size)


class PartBody:
    """One part's bytes, kept as the chunks they arrived in.

    aiohttp sends it as an async iterable, chunk by chunk (again from the start when a request is
    retried), so the bytes are never copied into one buffer, never sliced, and never joined with
    the request headers: the only copies left are the kernel's. ``read`` is for code that wants a
    file.
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


def s3_http_session(max_connections: int = 32) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
        # Objects are bytes to keep exactly as stored: nothing is to be decoded on the way.
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),
        read_bufsize=256 * 1024,
    )


@contextlib.asynccontextmanager
async def open_object_store(settings: CommonSettings) -> AsyncIterator[S3ObjectStore]:
    async with open_bucket(
        settings.s3_endpoint_url,
        settings.s3_bucket,
        settings.s3_access_key.get_secret_value(),
        settings.s3_secret_key.get_secret_value(),
        settings.s3_region,
        public_endpoint_url=settings.s3_public_endpoint_url,
    ) as store:
        yield store


def endpoint_of(endpoint_url: str | None, region: str) -> str:
    """The S3 endpoint a store talks to (None: AWS's of the region)."""
    return (endpoint_url or f"https://s3.{region}.amazonaws.com").rstrip("/")


@contextlib.asynccontextmanager
async def open_bucket(
    endpoint_url: str | None,
    bucket: str,
    access_key: str,
    secret_key: str,
    region: str,
    *,
    public_endpoint_url: str | None = None,
) -> AsyncIterator[S3ObjectStore]:
    """A store on any bucket (darkroom's own, or an import source's)."""
    endpoint = endpoint_of(endpoint_url, region)
    session = get_session()
    async with (
        session.create_client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=s3_client_config(),
        ) as client,
        s3_http_session() as http,
    ):
        data_path = S3Http(
            http,
            endpoint,
            bucket,
            Credentials(access_key, secret_key),
            region,
            public_endpoint_url=public_endpoint_url,
        )
        yield S3ObjectStore(client, data_path, bucket)


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

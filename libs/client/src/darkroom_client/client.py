"""Uploading to darkroom: batches for small photos, resumable chunked uploads for big files.

Chunks go up N at a time, each with its CRC32C; a failed chunk is retried with backoff. What has
been started is written to a small state file, so running the same upload again (after a kill, a
crash or a network cut) sends only the chunks the server does not have yet, and skips files that
are already done.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import google_crc32c

IMAGE_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
VIDEO_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".webm": "video/webm",
    ".avi": "video/x-msvideo",
}
MEDIA_TYPES = {**IMAGE_TYPES, **VIDEO_TYPES}
# Above this an image goes through a chunked upload too (the batch endpoint limit is 50 MB).
BATCH_MAX_BYTES = 20 * 1000 * 1000
BATCH_MAX_FILES = 50
RETRYABLE = {408, 425, 429, 500, 502, 503, 504}

ProgressFn = Callable[[str, int], None]


class UploadError(Exception):
    """A file could not be uploaded; the message says why."""


@dataclass
class UploadResult:
    uploaded: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> photo
    skipped: dict[str, str] = field(default_factory=dict)  # path -> already uploaded photo id
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason

    @property
    def ok(self) -> bool:
        return not self.failed


def find_media(paths: Iterable[str | Path]) -> list[Path]:
    """Files given, and the media files in folders given (recursively), sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                sorted(
                    p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_TYPES
                )
            )
        else:
            found.append(path)
    return found


class StateFile:
    """Which uploads were started and which files are done, so a rerun resumes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}

    @staticmethod
    def key(base_url: str, event_id: str, file: Path) -> str:
        stat = file.stat()
        return f"{base_url}|{event_id}|{file.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"

    def get(self, key: str) -> dict[str, Any] | None:
        value = self.data.get(key)
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any] | None) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)  # atomic: a kill never leaves half a state file


class RateLimit:
    """At most ``rate`` bytes a second across all requests (None: no limit)."""

    def __init__(self, rate: float | None) -> None:
        self._rate = rate
        self._next = time.monotonic()

    async def take(self, n: int) -> None:
        """Wait for the slot in which n more bytes may go."""
        if not self._rate:
            return
        now = time.monotonic()
        start = max(self._next, now)
        self._next = start + n / self._rate
        await asyncio.sleep(start - now)


class DarkroomClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        parallel: int = 4,
        retries: int = 8,
        state_file: Path | None = None,
        rate_limit: float | None = None,
        progress: ProgressFn | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._parallel = parallel
        self._retries = retries
        self._state = StateFile(state_file or Path(".darkroom-upload-state.json"))
        self._limit = RateLimit(rate_limit)
        self._progress = progress or (lambda name, n: None)
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> DarkroomClient:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=300)
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use 'async with DarkroomClient(...)'")
        return self._session

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        """A request with retries for what may succeed later; problem details on failure."""
        headers = {**self._headers, **kwargs.pop("headers", {})}
        for attempt in range(self._retries + 1):
            try:
                async with self.http.request(
                    method, self.base_url + path, headers=headers, **kwargs
                ) as resp:
                    body = await resp.json(content_type=None) if resp.content_length != 0 else None
                    if resp.status < 400:
                        return body
                    if resp.status not in RETRYABLE or attempt == self._retries:
                        raise UploadError(_problem_text(resp.status, body))
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt == self._retries:
                    raise UploadError(f"{type(exc).__name__}: {exc}") from exc
            await asyncio.sleep(_backoff(attempt))
        raise UploadError("unreachable")

    async def event_id(self, slug_or_id: str) -> str:
        if slug_or_id.startswith("ev_"):
            return str((await self._json("GET", f"/v1/events/{slug_or_id}"))["id"])
        found = await self._json("GET", "/v1/events", params={"slug": slug_or_id, "limit": "1"})
        if not found["items"]:
            raise UploadError(f"no event with the slug {slug_or_id!r}")
        return str(found["items"][0]["id"])

    async def upload(self, event: str, paths: Iterable[str | Path]) -> UploadResult:
        event_id = await self.event_id(event)
        result = UploadResult()
        files = find_media(paths)
        batch: list[Path] = []
        for file in files:
            key = StateFile.key(self.base_url, event_id, file) if file.exists() else ""
            done = self._state.get(key) if key else None
            if done and done.get("photo_id"):
                result.skipped[str(file)] = done["photo_id"]
                self._progress(str(file), file.stat().st_size)
                continue
            if not file.is_file():
                result.failed[str(file)] = "not a file"
                continue
            size = file.stat().st_size
            is_image = file.suffix.lower() in IMAGE_TYPES
            if is_image and size <= BATCH_MAX_BYTES and not done:
                batch.append(file)
                if len(batch) >= BATCH_MAX_FILES:
                    await self._send_batch(event_id, batch, result)
                    batch = []
                continue
            try:
                result.uploaded[str(file)] = await self._chunked(event_id, file, key, size)
            except UploadError as exc:
                result.failed[str(file)] = str(exc)
        if batch:
            await self._send_batch(event_id, batch, result)
        return result

    async def _send_batch(self, event_id: str, files: list[Path], result: UploadResult) -> None:
        form = aiohttp.FormData()
        handles = []
        try:
            for file in files:
                handle = file.open("rb")
                handles.append(handle)
                form.add_field(
                    "photos",
                    handle,
                    filename=file.name,
                    content_type=MEDIA_TYPES.get(file.suffix.lower(), "application/octet-stream"),
                )
            await self._limit.take(sum(f.stat().st_size for f in files))
            # One try: a batch is not resumable (each retry would need the files re-read).
            async with self.http.post(
                f"{self.base_url}/v1/events/{event_id}/photos", data=form, headers=self._headers
            ) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            for file in files:
                result.failed[str(file)] = f"{type(exc).__name__}: {exc}"
            return
        finally:
            for handle in handles:
                handle.close()
        by_name = {file.name: file for file in files}
        if resp.status >= 400:
            reasons = {
                s.get("filename"): f"{s['code']}: {s['detail']}"
                for s in (body or {}).get("skipped", [])
            }
            for file in files:
                result.failed[str(file)] = reasons.get(file.name) or _problem_text(
                    resp.status, body
                )
            return
        for photo in body["uploaded"]:
            sent = by_name.get(photo["original_filename"])
            if sent is not None:
                result.uploaded[str(sent)] = photo
                self._state.put(
                    StateFile.key(self.base_url, event_id, sent), {"photo_id": photo["id"]}
                )
                self._progress(str(sent), photo["size"])
        for skipped in body["skipped"]:
            refused = by_name.get(skipped.get("filename") or "")
            if refused is not None:
                result.failed[str(refused)] = f"{skipped['code']}: {skipped['detail']}"

    async def _chunked(self, event_id: str, file: Path, key: str, size: int) -> dict[str, Any]:
        state = self._state.get(key)
        upload = None
        if state and state.get("upload_id"):
            try:
                upload = await self._json("GET", f"/v1/uploads/{state['upload_id']}")
            except UploadError:
                upload = None
            if upload is not None and upload["state"] == "completed":
                return await self._finish(upload, key)
            if upload is not None and upload["state"] not in ("open", "completing"):
                upload = None  # expired, failed or cancelled: start over
        if upload is None:
            mime = MEDIA_TYPES.get(file.suffix.lower(), "application/octet-stream")
            upload = await self._json(
                "POST",
                f"/v1/events/{event_id}/uploads",
                json={"filename": file.name, "size": size, "mime_type": mime},
            )
            self._state.put(key, {"upload_id": upload["upload_id"]})
        missing = set(upload["missing"])
        chunk_size, count = upload["chunk_size"], upload["chunk_count"]
        for i in range(count):
            if i not in missing:
                self._progress(str(file), min(chunk_size, size - i * chunk_size))
        limit = asyncio.Semaphore(self._parallel)

        async def send(i: int) -> None:
            async with limit:
                await self._put_chunk(upload["upload_id"], file, i, chunk_size, size)

        await asyncio.gather(*(send(i) for i in sorted(missing)))
        done = await self._json("POST", f"/v1/uploads/{upload['upload_id']}/complete")
        self._state.put(key, {"photo_id": done["id"]})
        return dict(done)

    async def _finish(self, upload: dict[str, Any], key: str) -> dict[str, Any]:
        photo = await self._json("GET", f"/v1/photos/{upload['photo_id']}")
        self._state.put(key, {"photo_id": photo["id"]})
        return dict(photo)

    async def _put_chunk(
        self, upload_id: str, file: Path, i: int, chunk_size: int, size: int
    ) -> None:
        length = min(chunk_size, size - i * chunk_size)
        data = await asyncio.to_thread(_read_at, file, i * chunk_size, length)
        crc = base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()
        await self._limit.take(len(data))
        await self._json(
            "PUT",
            f"/v1/uploads/{upload_id}/chunks/{i}",
            data=data,
            headers={"X-Checksum-CRC32C": crc},
        )
        self._progress(str(file), len(data))


def _read_at(file: Path, offset: int, length: int) -> bytes:
    with file.open("rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def _backoff(attempt: int) -> float:
    """0.5 s, 1 s, 2 s ... up to 30 s, with jitter so parallel retries spread out."""
    return min(30.0, 0.5 * 2.0**attempt) * random.uniform(0.8, 1.2)


def _problem_text(status: int, body: Any) -> str:
    if isinstance(body, dict) and body.get("code"):
        return f"{status} {body['code']}: {body.get('detail') or body.get('title', '')}"
    return f"HTTP {status}"

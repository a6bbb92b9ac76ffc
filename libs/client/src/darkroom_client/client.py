"""Uploading to darkroom: batches for small photos, resumable chunked uploads for big files.

Chunks go up N at a time, each with its CRC32C; a failed request is retried with backoff, or
after the ``Retry-After`` the server asked for, and every write carries an ``Idempotency-Key``
kept across its retries, so a retry of a request whose answer was lost gets that answer instead
of doing it twice. What has been started is written to a state file in the user's state folder
(not the current one), keyed by server, event and the file's absolute path, size and mtime, so
running the same upload again from anywhere (after a kill, a crash or a network cut) sends only
the chunks the server does not have yet, and skips files that are already done.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import google_crc32c
import platformdirs
from aiolimiter import AsyncLimiter
from filelock import FileLock

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
# The longest Retry-After honoured as asked; a longer one is waited this long, then retried.
MAX_RETRY_AFTER_S = 300.0

ProgressFn = Callable[[str, int], None]
# Told before each wait to retry: what failed, the seconds until the next try, the try it will
# be, and how many tries there are in all.
RetryFn = Callable[[str, float, int, int], None]


def default_state_file() -> Path:
    """Where resume state lives unless told otherwise: one file per user (``DARKROOM_STATE``,
    else the platform's user state folder), so a run from another directory finds it."""
    explicit = os.environ.get("DARKROOM_STATE")
    if explicit:
        return Path(explicit)
    return platformdirs.user_state_path("darkroom") / "upload-state.json"


class UploadError(Exception):
    """A file could not be uploaded; the message says why (``status``: the server's answer,
    None when there was none)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class UploadResult:
    uploaded: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> photo
    skipped: dict[str, str] = field(default_factory=dict)  # path -> already uploaded photo id
    # path -> the photo in the event with the same bytes (the server kept no second copy)
    duplicates: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason

    @property
    def ok(self) -> bool:
        return not self.failed

    def record(self, path: str, photo: dict[str, Any]) -> None:
        """What the server made of a file sent: a new photo, or a duplicate of one there."""
        if photo.get("duplicate_of"):
            self.duplicates[path] = str(photo["duplicate_of"])
        else:
            self.uploaded[path] = photo


def is_excluded(path: Path, patterns: Iterable[str], root: Path | None = None) -> bool:
    """A macOS resource fork (``._*``, which copies a photo's name), or a file whose name, or
    path below ``root``, matches a shell-style pattern (``*.tmp``, ``rejects/*``)."""
    if path.name.startswith("._"):
        return True
    below = path.relative_to(root).as_posix() if root is not None else path.as_posix()
    return any(fnmatch.fnmatch(path.name, p) or fnmatch.fnmatch(below, p) for p in patterns)


def find_media(paths: Iterable[str | Path], exclude: Iterable[str] = ()) -> list[Path]:
    """Files given, and the media files in folders given (recursively), sorted; never one
    :func:`is_excluded` by ``exclude`` (matched below the folder given)."""
    patterns = list(exclude)
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and p.suffix.lower() in MEDIA_TYPES
                    and not is_excluded(p, patterns, path)
                )
            )
        elif not is_excluded(path, patterns):
            found.append(path)
    return found


@dataclass
class Plan:
    """What an upload would do (``--dry-run``)."""

    event_id: str
    send: dict[str, int] = field(default_factory=dict)  # path -> bytes it would send
    there: dict[str, int] = field(default_factory=dict)  # path -> size, done before
    failed: dict[str, str] = field(default_factory=dict)  # path -> why it cannot go


class StateFile:
    """Which uploads were started and which files are done, so a rerun resumes.

    Runs at once (two terminals, two folders of one shoot) share the file: each change is made
    under a lock on the file as it is on disk then, so no run's entries are lost to another's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = FileLock(str(path) + ".lock")
        self.data: dict[str, Any] = self._read()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def key(base_url: str, event_id: str, file: Path) -> str:
        stat = file.stat()
        return f"{base_url}|{event_id}|{file.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"

    def get(self, key: str) -> dict[str, Any] | None:
        value = self.data.get(key)
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any] | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self.data = self._read()
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1))
            os.replace(tmp, self.path)  # atomic: a kill never leaves half a state file


# Bytes of a body sent at a time: progress and the rate limit move in steps of this.
BLOCK = 64 * 1024
# Bytes read from a file at a time (in a thread), then sent in blocks.
READ = 1024 * 1024


class RateLimit:
    """At most ``rate`` bytes a second across all requests (None: no limit), in blocks as they
    go on the wire: aiolimiter's leaky bucket, a tenth of a second deep, so a transfer starts
    with a tenth of a second's burst at most and holds the rate for batches and chunks alike."""

    def __init__(self, rate: float | None) -> None:
        self._limiter = AsyncLimiter(rate / 10, 0.1) if rate else None
        # A block never larger than the bucket (aiolimiter refuses more than its capacity).
        self.block = max(1, min(BLOCK, int(rate / 10))) if rate else BLOCK

    async def take(self, n: int) -> None:
        if self._limiter is not None:
            await self._limiter.acquire(n)


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
        already_there: ProgressFn | None = None,
        on_retry: RetryFn | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._parallel = parallel
        # Requests that carry bytes (batches, chunks) in flight at once, across files.
        self._in_flight = asyncio.Semaphore(parallel)
        # Files being sent at once, across upload() calls (the hot folder makes one a file).
        self._files_at_once = asyncio.Semaphore(parallel)
        self._retries = retries
        self._state = StateFile(state_file or default_state_file())
        self._limit = RateLimit(rate_limit)
        # Bytes as they go on the wire (a negative count: a failed try's, sent again), and
        # bytes that need not go (files done before, chunks the server has).
        self._progress = progress or (lambda name, n: None)
        self._already_there = already_there or self._progress
        self._on_retry = on_retry or (lambda what, wait, attempt, tries: None)
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
        """The answer's body; an UploadError that says why when it is a failure."""
        status, body = await self._send(method, path, **kwargs)
        if status >= 400:
            raise UploadError(_problem_text(status, body), status)
        return body

    async def _send(
        self,
        method: str,
        path: str,
        *,
        idempotency_key: str | None = None,
        headers: dict[str, str] | None = None,
        body: Callable[[contextlib.ExitStack], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> tuple[int, Any]:
        """The status and body of the first answer that is not worth another try, retrying
        (after the Retry-After asked for, else with backoff) on lost connections and the
        statuses that may succeed later, and saying so through ``on_retry``. A write carries
        an Idempotency-Key (``idempotency_key``, else a new one), the same on each retry.
        ``body`` makes the request's body anew for each try (files it opens on the stack are
        closed after it)."""
        headers = {**self._headers, **(headers or {})}
        if method != "GET":
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        tries = self._retries + 1
        started = time.monotonic()
        for attempt in range(1, tries + 1):
            retry_after: float | None = None
            try:
                with contextlib.ExitStack() as stack:
                    extra = body(stack) if body is not None else {}
                    async with self.http.request(
                        method, self.base_url + path, headers=headers, **kwargs, **extra
                    ) as resp:
                        answer = await _body_of(resp)
                        if resp.status not in RETRYABLE and not _still_running(resp, answer):
                            return resp.status, answer
                        failure = _problem_text(resp.status, answer)
                        retry_after = _retry_after(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if attempt == tries:
                raise UploadError(
                    f"gave up after {tries} tries in {time.monotonic() - started:.0f} s: {failure}"
                )
            wait = retry_after if retry_after is not None else _backoff(attempt - 1)
            self._on_retry(f"{method} {path}: {failure}", wait, attempt + 1, tries)
            await asyncio.sleep(wait)
        raise UploadError("unreachable")

    async def event_id(self, slug_or_id: str) -> str:
        if slug_or_id.startswith("ev_"):
            return str((await self._json("GET", f"/v1/events/{slug_or_id}"))["id"])
        found = await self._json("GET", "/v1/events", params={"slug": slug_or_id, "limit": "1"})
        if not found["items"]:
            raise UploadError(f"no event with the slug {slug_or_id!r}")
        return str(found["items"][0]["id"])

    async def upload(
        self, event: str, paths: Iterable[str | Path], *, exclude: Iterable[str] = ()
    ) -> UploadResult:
        """Every media file of ``paths`` not done before, up to ``parallel`` files at once and
        ``parallel`` requests in flight in all (batches and chunks)."""
        event_id = await self.event_id(event)
        result = UploadResult()
        batches: list[list[Path]] = [[]]
        big: list[tuple[Path, str, int]] = []
        for file in find_media(paths, exclude):
            key = StateFile.key(self.base_url, event_id, file) if file.exists() else ""
            done = self._state.get(key) if key else None
            if done and done.get("photo_id"):
                result.skipped[str(file)] = done["photo_id"]
                self._already_there(str(file), file.stat().st_size)
                continue
            if not file.is_file():
                result.failed[str(file)] = "not a file"
                continue
            size = file.stat().st_size
            if file.suffix.lower() in IMAGE_TYPES and size <= BATCH_MAX_BYTES and not done:
                if len(batches[-1]) >= BATCH_MAX_FILES:
                    batches.append([])
                batches[-1].append(file)
            else:
                big.append((file, key, size))
        files_at_once = self._files_at_once

        async def send_batch(files: list[Path]) -> None:
            async with files_at_once, self._in_flight:
                await self._send_batch(event_id, files, result)

        async def send_big(file: Path, key: str, size: int) -> None:
            async with files_at_once:
                try:
                    photo = await self._chunked(event_id, file, key, size)
                    result.record(str(file), photo)
                except UploadError as exc:
                    result.failed[str(file)] = str(exc)
                except OSError as exc:
                    result.failed[str(file)] = f"cannot read it: {exc}"

        await asyncio.gather(
            *(send_batch(files) for files in batches if files),
            *(send_big(*entry) for entry in big),
        )
        return result

    async def plan(
        self, event: str, paths: Iterable[str | Path], *, exclude: Iterable[str] = ()
    ) -> Plan:
        """What :meth:`upload` would do, sending nothing: the bytes each file would send (a
        started upload's missing chunks only) and the files that are there already."""
        event_id = await self.event_id(event)
        plan = Plan(event_id)
        for file in find_media(paths, exclude):
            if not file.is_file():
                plan.failed[str(file)] = "not a file"
                continue
            size = file.stat().st_size
            state = self._state.get(StateFile.key(self.base_url, event_id, file)) or {}
            if state.get("photo_id"):
                plan.there[str(file)] = size
                continue
            plan.send[str(file)] = size
            if state.get("upload_id"):
                try:
                    upload = await self._json("GET", f"/v1/uploads/{state['upload_id']}")
                except UploadError:
                    continue  # gone: it starts over
                if upload["state"] == "completed":
                    del plan.send[str(file)]
                    plan.there[str(file)] = size
                elif upload["state"] in ("open", "completing"):
                    chunk_size = int(upload["chunk_size"])
                    plan.send[str(file)] = sum(
                        min(chunk_size, size - i * chunk_size) for i in upload["missing"]
                    )
        return plan

    async def _send_batch(self, event_id: str, files: list[Path], result: UploadResult) -> None:
        tries = _Tries(self._progress)
        try:
            # The files as they are sent: a file changed meanwhile is another version, not done.
            keys = {file: StateFile.key(self.base_url, event_id, file) for file in files}
        except OSError as exc:
            for file in files:
                result.failed[str(file)] = f"cannot read it: {exc}"
            return

        def form(stack: contextlib.ExitStack) -> dict[str, Any]:
            sent = tries.next()
            data = aiohttp.FormData()
            for file in files:
                data.add_field(
                    "photos",
                    self._file_blocks(stack.enter_context(file.open("rb")), str(file), sent),
                    filename=file.name,
                    content_type=MEDIA_TYPES.get(file.suffix.lower(), "application/octet-stream"),
                )
            return {"data": data}

        # Retried like any request: the Idempotency-Key makes a retry of a batch the server
        # took (its answer lost on the way) replay that answer, not add the photos again.
        try:
            status, body = await self._send("POST", f"/v1/events/{event_id}/photos", body=form)
        except (UploadError, OSError) as exc:
            for file in files:
                result.failed[str(file)] = str(exc)
            return
        if status >= 400:
            reasons = {
                s.get("filename"): f"{s['code']}: {s['detail']}"
                for s in (body or {}).get("skipped", [])
            }
            for file in files:
                result.failed[str(file)] = reasons.get(file.name) or _problem_text(status, body)
            return
        # The answer lists what each file became in the order sent, but for those skipped
        # (named by their field, photos[i]): a duplicate is another photo, named otherwise.
        refused = {s.get("field"): s for s in body["skipped"]}
        stored = [f for i, f in enumerate(files) if f"photos[{i}]" not in refused]
        if len(stored) != len(body["uploaded"]):
            for file in stored:
                result.failed[str(file)] = "the server's answer does not list each file sent"
            return
        for sent, photo in zip(stored, body["uploaded"], strict=True):
            result.record(str(sent), photo)
            self._state.put(keys[sent], {"photo_id": photo["id"]})
        for i, file in enumerate(files):
            skipped = refused.get(f"photos[{i}]")
            if skipped is not None:
                result.failed[str(file)] = f"{skipped['code']}: {skipped['detail']}"

    async def _chunked(self, event_id: str, file: Path, key: str, size: int) -> dict[str, Any]:
        state = self._state.get(key)
        upload = None
        if state and state.get("upload_id"):
            try:
                upload = await self._json("GET", f"/v1/uploads/{state['upload_id']}")
            except UploadError as exc:
                if exc.status not in (404, 410):
                    raise  # the server could not say now: the upload is kept for a rerun
                upload = None
            if upload is not None and upload["state"] == "completed":
                return await self._finish(upload, key)
            if upload is not None and upload["state"] not in ("open", "completing"):
                upload = None  # expired, failed or cancelled: start over
        if upload is None:
            mime = MEDIA_TYPES.get(file.suffix.lower(), "application/octet-stream")
            # The key is kept before the request goes: a run killed before it wrote the answer
            # down sends the same key again, and gets the same upload, not a second one.
            create_key = (state or {}).get("create_key") or str(uuid.uuid4())
            self._state.put(key, {"create_key": create_key})
            try:
                upload = await self._json(
                    "POST",
                    f"/v1/events/{event_id}/uploads",
                    json={"filename": file.name, "size": size, "mime_type": mime},
                    idempotency_key=create_key,
                )
            except UploadError as exc:
                if exc.status is not None:
                    # Refused (the cap, an archived event): the server keeps that answer for
                    # the key, so the next run asks with a new one.
                    self._state.put(key, None)
                raise
            self._state.put(key, {"upload_id": upload["upload_id"]})
        missing = set(upload["missing"])
        chunk_size, count = upload["chunk_size"], upload["chunk_count"]
        for i in range(count):
            if i not in missing:
                self._already_there(str(file), min(chunk_size, size - i * chunk_size))

        async def send(i: int) -> None:
            async with self._in_flight:
                await self._put_chunk(upload["upload_id"], file, i, chunk_size, size)

        chunks = [asyncio.ensure_future(send(i)) for i in sorted(missing)]
        try:
            await asyncio.gather(*chunks)
        finally:
            # One chunk failed: the others stop too, the file is given up on as a whole.
            for chunk in chunks:
                chunk.cancel()
            await asyncio.gather(*chunks, return_exceptions=True)
        done = await self._json("POST", f"/v1/uploads/{upload['upload_id']}/complete")
        self._state.put(key, {"photo_id": done["id"]})
        return dict(done)

    async def _finish(self, upload: dict[str, Any], key: str) -> dict[str, Any]:
        photo = await self._json("GET", f"/v1/photos/{upload['photo_id']}")
        self._state.put(key, {"photo_id": photo["id"]})
        # As the completion answered it: a copy of a photo there says so.
        return {**photo, "duplicate_of": upload.get("duplicate_of")}

    async def _put_chunk(
        self, upload_id: str, file: Path, i: int, chunk_size: int, size: int
    ) -> None:
        length = min(chunk_size, size - i * chunk_size)
        data = await asyncio.to_thread(_read_at, file, i * chunk_size, length)
        if len(data) != length:
            raise UploadError(f"{file} changed while it was being sent (it is shorter now)")
        crc = base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()
        tries = _Tries(self._progress)

        def body(stack: contextlib.ExitStack) -> dict[str, Any]:
            return {"data": self._blocks(data, str(file), tries.next())}

        await self._json(
            "PUT",
            f"/v1/uploads/{upload_id}/chunks/{i}",
            body=body,
            # Sent as it is throttled, but its length said up front, as for any chunk.
            headers={"X-Checksum-CRC32C": crc, "Content-Length": str(length)},
        )

    async def _blocks(self, data: bytes, name: str, sent: _Sent) -> AsyncIterator[bytes]:
        """``data`` in blocks as the rate limit lets them go, each counted once it went (the
        next one is asked for when it is written)."""
        view = memoryview(data)
        for start in range(0, len(data), self._limit.block):
            block = view[start : start + self._limit.block]
            await self._limit.take(len(block))
            yield bytes(block)
            sent.add(name, len(block))

    async def _file_blocks(self, handle: BinaryIO, name: str, sent: _Sent) -> AsyncIterator[bytes]:
        while data := await asyncio.to_thread(handle.read, READ):
            async for block in self._blocks(data, name, sent):
                yield block


class _Sent:
    """What one try of a request has sent, file by file, told to progress as it goes."""

    def __init__(self, progress: ProgressFn) -> None:
        self._progress = progress
        self.by_name: dict[str, int] = {}

    def add(self, name: str, n: int) -> None:
        self.by_name[name] = self.by_name.get(name, 0) + n
        self._progress(name, n)


class _Tries:
    """The tries of one request: a new try takes back from progress what the last one sent
    (it is sent again)."""

    def __init__(self, progress: ProgressFn) -> None:
        self._progress = progress
        self._last: _Sent | None = None

    def next(self) -> _Sent:
        if self._last is not None:
            for name, n in self._last.by_name.items():
                self._progress(name, -n)
        self._last = _Sent(self._progress)
        return self._last


def _read_at(file: Path, offset: int, length: int) -> bytes:
    with file.open("rb") as handle:
        handle.seek(offset)
        return handle.read(length)


async def _body_of(resp: aiohttp.ClientResponse) -> Any:
    if resp.content_length == 0:
        return None
    try:
        return await resp.json(content_type=None)
    except ValueError:
        return None  # not JSON (a proxy's error page): the status says enough


def _still_running(resp: aiohttp.ClientResponse, answer: Any) -> bool:
    """The server is still doing the first try of this request (its answer was lost to us):
    ask again, as it says, for that answer."""
    return (
        resp.status == 409
        and isinstance(answer, dict)
        and answer.get("code") == "idempotency_key_in_use"
    )


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds, or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def _backoff(attempt: int) -> float:
    """0.5 s, 1 s, 2 s ... up to 30 s, with jitter so parallel retries spread out."""
    return min(30.0, 0.5 * 2.0**attempt) * random.uniform(0.8, 1.2)


def _problem_text(status: int, body: Any) -> str:
    if isinstance(body, dict) and body.get("code"):
        return f"{status} {body['code']}: {body.get('detail') or body.get('title', '')}"
    return f"HTTP {status}"

"""The fault suite's harness: the stack as processes, a webhook receiver, a retrying client, the
invariant checker and the per-case report.

Every case runs against its own namespace, database and bucket, and its own four service
processes; the stand-ins (nx-27017, moto_server) belong to the fault suite alone, so that freezing
them (SIGSTOP) disturbs no other test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from darkroom_ingest.tus.protocol import VERSION, format_metadata
from darkroom_kit.messaging import Topology
from PIL import Image
from standardwebhooks import Webhook

from darkroom_dev.servers import Server, TcpProxy, children_of, pid_alive
from darkroom_dev.stack import SERVICES, start_services

FULL = os.environ.get("FAULTS_FULL", "") not in ("", "0")
# From the fault's end until every invariant must hold; generous, it is not a speed test.
RECOVERY_BOUND_S = float(os.environ.get("FAULTS_RECOVERY_BOUND", "90"))
# How long one upload keeps retrying (as a real client would) before it gives up.
CLIENT_PATIENCE_S = float(os.environ.get("FAULTS_CLIENT_PATIENCE", "120"))
CHUNK = 5 * 1024 * 1024

REPORT: list[dict[str, Any]] = []


def scaled(bounded: int, full: int) -> int:
    return full if FULL else bounded


async def poll(
    check: Callable[[], Awaitable[Any]], timeout: float, interval: float = 0.5
) -> tuple[Any, float]:
    """Poll ``check`` until it returns something truthy; (value, when) or AssertionError."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value: Any = None
    while True:
        value = await check()
        if value:
            return value, time.monotonic()
        if loop.time() >= deadline:
            raise AssertionError(f"not within {timeout:.0f}s; last: {value!r}")
        await asyncio.sleep(interval)


# ---- files -----------------------------------------------------------------------------------


def _base_jpeg() -> bytes:
    image = Image.new("RGB", (96, 64), (30, 90, 200))
    for x in range(0, 96, 8):
        image.paste((x * 2, 60, 255 - x * 2), (x, 0, x + 4, 64))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


BASE_JPEG = _base_jpeg()


def unique_jpeg(size: int = 0) -> bytes:
    """A valid JPEG that no other call returns (random bytes after the end-of-image marker,
    which decoders ignore, closed by another EOI as the truncation check wants), padded to
    ``size`` bytes."""
    tail = os.urandom(max(32, size - len(BASE_JPEG) - 2))
    return BASE_JPEG + tail + b"\xff\xd9"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the services as processes ---------------------------------------------------------------


class Stack:
    """The four services, each a process; every process they start is remembered so that the
    case can prove none is left behind."""

    def __init__(
        self,
        env: dict[str, str],
        logs: Path,
        base_port: int,
        overrides: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.env = env
        self.overrides = overrides or {}
        self.logs = logs
        self.base_port = base_port
        self.services: dict[str, Server] = {}
        self.tracked: dict[int, str] = {}  # pid -> what it is
        self.exit_codes: dict[str, int | None] = {}

    def url(self, name: str) -> str:
        offset = [s[0] for s in SERVICES].index(name)
        return f"http://127.0.0.1:{self.base_port + offset}"

    @property
    def api_url(self) -> str:
        return self.url("upload-ingest")

    async def start(self, names: list[str] | None = None) -> None:
        wanted = [s[0] for s in SERVICES if names is None or s[0] in names]
        plain = [n for n in wanted if n not in self.overrides]
        groups = [(self.env, plain)] if plain else []
        groups += [({**self.env, **self.overrides[n]}, [n]) for n in wanted if n not in plain]
        started = await asyncio.gather(
            *(
                asyncio.to_thread(start_services, env, self.logs, self.base_port, group)
                for env, group in groups
            ),
            return_exceptions=True,
        )
        for group in started:
            if isinstance(group, BaseException):
                continue
            for server in group:
                self.services[server.name] = server
                self.track(server.name)
        for group in started:
            if isinstance(group, BaseException):
                raise group

    def pid(self, name: str) -> int:
        process = self.services[name].process
        assert process is not None
        return process.pid

    def track(self, name: str) -> set[int]:
        """Remember the service's process and its descendants now; returns the descendants."""
        pid = self.pid(name)
        self.tracked[pid] = name
        kids = children_of(pid)
        for kid in kids:
            self.tracked.setdefault(kid, f"{name} child")
        return kids

    async def kill(self, name: str) -> set[int]:
        """kill -9; returns the descendants it had (collected just before)."""
        kids = self.track(name)
        process = self.services[name].process
        assert process is not None
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait, 10)
        self.exit_codes[name] = process.returncode
        return kids

    async def terminate(self, name: str, timeout: float, *, sent: bool = False) -> int | None:
        """SIGTERM (unless ``sent``: already sent), and the exit status (None: it had to be
        killed after ``timeout``)."""
        if not sent:
            self.track(name)
        process = self.services[name].process
        assert process is not None
        if not sent and process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code: int | None = await asyncio.to_thread(process.wait, timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 10)
            code = None
        self.exit_codes[name] = code
        return code

    async def restart(self, name: str) -> None:
        await self.start([name])

    async def stop_all(self, timeout: float = 45) -> list[str]:
        """SIGTERM every service, then report (and kill) any process of ours still alive."""
        for name, server in self.services.items():
            with contextlib.suppress(Exception):
                self.track(name)
            if server.process is not None and server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)
        for name, server in self.services.items():
            if server.process is None:
                continue
            try:
                self.exit_codes[name] = await asyncio.to_thread(server.process.wait, timeout)
            except subprocess.TimeoutExpired:
                server.process.kill()
                self.exit_codes[name] = None
        return await self.leftovers(grace=10)

    async def leftovers(self, grace: float) -> list[str]:
        deadline = time.monotonic() + grace
        alive = [p for p in self.tracked if pid_alive(p)]
        while alive and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            alive = [p for p in alive if pid_alive(p)]
        left = [f"{self.tracked[p]} (pid {p})" for p in alive]
        for p in alive:  # only processes this case started
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        return left


# ---- the webhook receiver ---------------------------------------------------------------------


@dataclass
class EndpointLog:
    name: str
    endpoint_id: str = ""
    secret: str = ""
    delay_s: float = 0.0
    requests: int = 0
    bad_signatures: int = 0
    duplicates: int = 0  # the same webhook-id again
    junk: int = 0  # a photo.uploaded that names no photo
    seen: set[str] = field(default_factory=set)
    # photo id -> the webhook-ids its photo.uploaded came with (more than one: announced twice)
    photos: dict[str, set[str]] = field(default_factory=dict)
    last_ms: float = 0.0


class Receiver:
    """Verifies every delivery with the reference ``standardwebhooks`` verifier and dedupes on
    ``webhook-id``, as a receiver following the specification does."""

    def __init__(self, names: list[str]) -> None:
        self.endpoints = {n: EndpointLog(n) for n in names}
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, port: int) -> None:
        app = web.Application()
        app.router.add_post("/hooks/{name}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.port = port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{name}"

    async def _handle(self, request: web.Request) -> web.Response:
        log = self.endpoints[request.match_info["name"]]
        body = await request.read()
        log.requests += 1
        if log.delay_s:
            await asyncio.sleep(log.delay_s)
        try:
            payload = Webhook(log.secret).verify(body, dict(request.headers))
        except Exception:
            log.bad_signatures += 1
            return web.Response(status=400)
        webhook_id = request.headers["webhook-id"]
        log.last_ms = time.monotonic()
        if webhook_id in log.seen:
            log.duplicates += 1
            return web.Response(status=204)
        log.seen.add(webhook_id)
        if payload.get("type") == "photo.uploaded":
            photo = (payload.get("data") or {}).get("photo")
            if not isinstance(photo, dict) or "id" not in photo:
                log.junk += 1
            else:
                log.photos.setdefault(photo["id"], set()).add(webhook_id)
        return web.Response(status=204)

    @property
    def delivered(self) -> int:
        return sum(len(e.seen) for e in self.endpoints.values())

    @property
    def duplicates(self) -> int:
        return sum(e.duplicates for e in self.endpoints.values())


# ---- a client that retries as a real one does ---------------------------------------------


@dataclass
class Accepted:
    event_id: str
    filename: str
    sha256: str
    photo_id: str
    via: str


class GaveUp(Exception):
    pass


RETRY_STATUSES = {409, 429, 500, 502, 503, 504}


class Uploader:
    """Batch and chunked uploads with retries: the same Idempotency-Key on every retry of a
    request, chunks re-sent and the upload resumed from what the server says arrived."""

    def __init__(self, session: aiohttp.ClientSession, patience_s: float = CLIENT_PATIENCE_S):
        self.http = session
        self.patience_s = patience_s
        self.accepted: list[Accepted] = []
        self.statuses: Counter[str] = Counter()
        self.gave_up: list[str] = []
        self.chunks_sent = 0
        self.completing = asyncio.Event()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...],
        body: Callable[[], Any] | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        what: str,
        retry: bool = True,
        answer_headers: bool = False,
    ) -> tuple[int, Any]:
        """The answer's status and JSON body (with ``answer_headers``: its headers instead,
        for protocols that answer in headers, as tus does)."""
        deadline = time.monotonic() + self.patience_s
        delay = 0.2
        last = ""
        while True:
            try:
                async with self.http.request(
                    method,
                    path,
                    data=body() if body is not None else None,
                    json=json_body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=90),
                ) as resp:
                    self.statuses[str(resp.status)] += 1
                    text = await resp.read()
                    if resp.status in ok:
                        if answer_headers:
                            return resp.status, dict(resp.headers)
                        return resp.status, json.loads(text) if text else None
                    last = f"{resp.status} {text[:200]!r}"
                    if resp.status not in RETRY_STATUSES:
                        raise GaveUp(f"{what}: {last}")
                    wait = resp.headers.get("Retry-After", "")
                    if wait.isdigit():
                        delay = max(delay, min(float(wait), 2.0))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.statuses[type(exc).__name__] += 1
                last = f"{type(exc).__name__}: {exc}"
            if not retry or time.monotonic() + delay > deadline:
                raise GaveUp(f"{what}: {last}")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    async def batch(
        self,
        event_id: str,
        files: list[tuple[str, bytes]],
        *,
        retry: bool = True,
        trickle_s: float = 0.0,
    ) -> bool:
        """One batch request (retried with the same key); with ``trickle_s`` the body takes
        about that long to send, so the request is in flight for a while."""
        boundary = uuid.uuid4().hex
        parts = []
        for name, data in files:
            parts.append(
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="photos"; '
                    f'filename="{name}"\r\nContent-Type: image/jpeg\r\n\r\n'
                ).encode()
                + data
                + b"\r\n"
            )
        parts.append(f"--{boundary}--\r\n".encode())
        raw = b"".join(parts)
        headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Idempotency-Key": uuid.uuid4().hex,
        }

        def body() -> Any:
            if not trickle_s:
                return raw
            headers["Content-Length"] = str(len(raw))
            step = max(1, len(raw) // 20)

            async def gen() -> AsyncIterator[bytes]:
                for i in range(0, len(raw), step):
                    yield raw[i : i + step]
                    await asyncio.sleep(trickle_s / 20)

            return gen()

        names = ", ".join(n for n, _ in files)
        try:
            _, answer = await self._request(
                "POST",
                f"/v1/events/{event_id}/photos",
                ok=(201,),
                body=body,
                headers=headers,
                what=f"batch [{names}]",
                retry=retry,
            )
        except GaveUp as exc:
            self.gave_up.append(str(exc))
            return False
        shas = {n: sha256(d) for n, d in files}
        for photo in answer["uploaded"]:
            self.accepted.append(
                Accepted(
                    event_id,
                    photo["original_filename"],
                    photo["sha256"],
                    photo["id"],
                    "batch",
                )
            )
            assert shas[photo["original_filename"]] == photo["sha256"]
        if answer["skipped"]:
            self.gave_up.append(f"batch [{names}]: skipped {answer['skipped']}")
        return True

    async def chunked(
        self, event_id: str, name: str, data: bytes, *, between_chunks_s: float = 0.0
    ) -> bool:
        digest = sha256(data)
        try:
            _, upload = await self._request(
                "POST",
                f"/v1/events/{event_id}/uploads",
                ok=(201,),
                json_body={
                    "filename": name,
                    "size": len(data),
                    "mime_type": "image/jpeg",
                    "sha256": digest,
                },
                headers={"Idempotency-Key": uuid.uuid4().hex},
                what=f"chunked {name}: create",
            )
            upload_id, size = upload["upload_id"], upload["chunk_size"]
            missing = list(range(upload["chunk_count"]))
            complete_key = uuid.uuid4().hex
            for _ in range(20):
                for i in missing:

                    def piece(i: int = i) -> bytes:
                        return data[i * size : (i + 1) * size]

                    await self._request(
                        "PUT",
                        f"/v1/uploads/{upload_id}/chunks/{i}",
                        ok=(200,),
                        body=piece,
                        headers={"Content-Type": "application/octet-stream"},
                        what=f"chunked {name}: chunk {i}",
                    )
                    self.chunks_sent += 1
                    if between_chunks_s:
                        await asyncio.sleep(between_chunks_s)
                # Resume from what the server says it holds, as a client after a crash does.
                _, state = await self._request(
                    "GET", f"/v1/uploads/{upload_id}", ok=(200,), what=f"chunked {name}: state"
                )
                missing = state["missing"]
                if state["state"] == "completed" or not missing:
                    break
            self.completing.set()
            _, photo = await self._request(
                "POST",
                f"/v1/uploads/{upload_id}/complete",
                ok=(200, 201),
                headers={"Idempotency-Key": complete_key},
                what=f"chunked {name}: complete",
            )
        except GaveUp as exc:
            self.gave_up.append(str(exc))
            return False
        assert photo["sha256"] == digest
        self.accepted.append(Accepted(event_id, name, digest, photo["id"], "chunked"))
        return True

    async def tus(
        self,
        event_id: str,
        name: str,
        data: bytes,
        *,
        piece: int = 1024 * 1024,
        between_pieces_s: float = 0.0,
    ) -> bool:
        """A tus upload as tus clients send one: PATCHes of ``piece`` bytes at the offset, and
        after any failure the offset asked again with HEAD and the bytes sent from there."""
        digest = sha256(data)
        meta = format_metadata({"event": event_id, "filename": name, "filetype": "image/jpeg"})
        tus = {"Tus-Resumable": VERSION}
        try:
            _, created = await self._request(
                "POST",
                "/v1/tus/",
                ok=(201,),
                headers={**tus, "Upload-Length": str(len(data)), "Upload-Metadata": meta},
                what=f"tus {name}: create",
                answer_headers=True,
            )
            location = created["Location"]
            offset, photo_id = 0, None
            deadline = time.monotonic() + self.patience_s
            while photo_id is None:
                if time.monotonic() > deadline:
                    raise GaveUp(f"tus {name}: no photo within {self.patience_s} s")
                try:
                    async with self.http.patch(
                        location,
                        data=data[offset : offset + piece],
                        headers={
                            **tus,
                            "Upload-Offset": str(offset),
                            "Content-Type": "application/offset+octet-stream",
                        },
                        timeout=aiohttp.ClientTimeout(total=90),
                    ) as resp:
                        self.statuses[str(resp.status)] += 1
                        await resp.read()
                        if resp.status == 204:
                            self.chunks_sent += 1
                            offset = int(resp.headers["Upload-Offset"])
                            photo_id = resp.headers.get("X-Darkroom-Photo-Id")
                            if between_pieces_s:
                                await asyncio.sleep(between_pieces_s)
                            continue
                        if resp.status not in RETRY_STATUSES | {423}:
                            raise GaveUp(f"tus {name}: PATCH {resp.status}")
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    self.statuses[type(exc).__name__] += 1
                await asyncio.sleep(0.2)
                # Where the server is: the last byte may have landed (and made the photo).
                _, state = await self._request(
                    "HEAD",
                    location,
                    ok=(200,),
                    headers=tus,
                    what=f"tus {name}: offset",
                    answer_headers=True,
                )
                offset = int(state["Upload-Offset"])
                if offset == len(data):
                    photo_id = await self._tus_photo(location)
        except GaveUp as exc:
            self.gave_up.append(str(exc))
            return False
        self.accepted.append(Accepted(event_id, name, digest, photo_id, "tus"))
        return True

    async def direct(self, event_id: str, name: str, data: bytes) -> bool:
        """A direct upload: the ticket, one PUT straight to S3 (to the signed URL, no
        credentials), then the completion, retried with the same key until it answers."""
        digest = sha256(data)
        try:
            _, ticket = await self._request(
                "POST",
                f"/v1/events/{event_id}/direct-uploads",
                ok=(201,),
                json_body={"filename": name, "size": len(data), "mime_type": "image/jpeg"},
                headers={"Idempotency-Key": uuid.uuid4().hex},
                what=f"direct {name}: ticket",
            )
            async with (
                aiohttp.ClientSession() as s3,
                s3.put(ticket["url"], data=data, headers=ticket["headers"]) as put,
            ):
                if put.status != 200:
                    raise GaveUp(f"direct {name}: S3 PUT {put.status}")
            _, photo = await self._request(
                "POST",
                f"/v1/direct-uploads/{ticket['upload_id']}/complete",
                ok=(200,),
                headers={"Idempotency-Key": uuid.uuid4().hex},
                what=f"direct {name}: complete",
            )
        except GaveUp as exc:
            self.gave_up.append(str(exc))
            return False
        self.accepted.append(Accepted(event_id, name, digest, photo["id"], "direct"))
        return True

    async def _tus_photo(self, location: str) -> str:
        upload_id = location.rsplit("/", 1)[1]
        _, state = await self._request(
            "GET", f"/v1/uploads/{upload_id}", ok=(200,), what=f"tus {upload_id}: state"
        )
        photo_id: str = state["photo_id"]
        return photo_id


async def run_load(
    uploader: Uploader,
    events: list[str],
    *,
    batches: int,
    per_batch: int,
    chunked: int = 0,
    tus: int = 0,
    direct: int = 0,
    concurrency: int = 4,
    between_chunks_s: float = 0.0,
    prefix: str = "f",
) -> None:
    """``batches`` batch requests of ``per_batch`` small JPEGs, spread over the events, and
    ``chunked`` chunked uploads of 11 MiB (three chunks), all at once up to ``concurrency``."""
    gate = asyncio.Semaphore(concurrency)

    async def one_batch(n: int) -> None:
        files = [(f"{prefix}{n:04d}-{k:02d}.jpg", unique_jpeg()) for k in range(per_batch)]
        async with gate:
            await uploader.batch(events[n % len(events)], files)

    async def one_chunked(n: int) -> None:
        await uploader.chunked(
            events[n % len(events)],
            f"{prefix}big{n:03d}.jpg",
            unique_jpeg(2 * CHUNK + 1024 * 1024),
            between_chunks_s=between_chunks_s,
        )

    async def one_tus(n: int) -> None:
        # 1 MiB pieces: every part made of several PATCHes, a tail object between them.
        await uploader.tus(
            events[n % len(events)],
            f"{prefix}tus{n:03d}.jpg",
            unique_jpeg(CHUNK + 3 * 1024 * 1024),
            between_pieces_s=between_chunks_s / 3,
        )

    async def one_direct(n: int) -> None:
        async with gate:
            await uploader.direct(
                events[n % len(events)], f"{prefix}direct{n:03d}.jpg", unique_jpeg(300_000)
            )

    await asyncio.gather(
        *(one_batch(n) for n in range(batches)),
        *(one_chunked(n) for n in range(chunked)),
        *(one_tus(n) for n in range(tus)),
        *(one_direct(n) for n in range(direct)),
    )


async def run_load_until(
    uploader: Uploader,
    events: list[str],
    stop: asyncio.Event,
    *,
    workers: int,
    per_batch: int,
    pause_s: float,
    prefix: str = "u",
) -> None:
    """Uploads that go on until ``stop`` is set (each request finishes, with its retries)."""

    async def worker(w: int) -> None:
        n = 0
        while not stop.is_set():
            files = [(f"{prefix}{w}-{n:04d}-{k}.jpg", unique_jpeg()) for k in range(per_batch)]
            await uploader.batch(events[(w + n) % len(events)], files)
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause_s)

    await asyncio.gather(*(worker(w) for w in range(workers)))


# ---- the case context, the invariants and the report -------------------------------------


@dataclass
class Case:
    name: str
    stack: Stack
    receiver: Receiver
    http: aiohttp.ClientSession
    uploader: Uploader
    db: Any  # pymongo AsyncDatabase
    events: list[str]
    cli_env: dict[str, str]
    topology: Topology
    amqp_url: str  # direct, never through the proxy
    mongo_process: Any  # the stand-ins' processes, to freeze
    s3_process: Any
    proxy: TcpProxy | None = None  # in front of the broker, for the services only
    s3_proxy: TcpProxy | None = None  # in front of S3, for metadata-repair only
    s3_url: str = ""
    # The bucket of upload-ingest's import source "drop" (IMPORT_SOURCES), not created.
    import_bucket: str = ""
    injected: str = ""
    recovery_s: float | None = None
    orphans_found: int | None = None
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    checked: bool = False
    photos_stored: int = 0

    async def problems_now(self) -> list[str]:
        """Every invariant that does not hold right now (empty: all hold)."""
        problems: list[str] = []
        photos = [
            p
            async for p in self.db.photos.find(
                {"event_id": {"$in": self.events}},
                {"_id": 1, "event_id": 1, "sha256": 1, "status": 1, "original_filename": 1},
            )
        ]
        self.photos_stored = len(photos)

        # A photo is known by its sha256; one uploaded with tus or direct may have none (it is
        # hashed only when a file of its size is in the event), so by its event and file name,
        # unique here.
        def key_of(sha: str | None, event_id: str, filename: str) -> str:
            return sha or f"name:{event_id}/{filename}"

        by_sha: dict[str, list[str]] = {}
        for p in photos:
            key = key_of(p["sha256"], p["event_id"], p.get("original_filename", ""))
            by_sha.setdefault(key, []).append(p["_id"])
        twice = {s: ids for s, ids in by_sha.items() if len(ids) > 1}
        if twice:
            problems.append(f"{len(twice)} file(s) stored as more than one photo: {twice}")
        lost = []
        for a in self.uploader.accepted:
            keys = [a.sha256, key_of(None, a.event_id, a.filename)]
            if not any(a.photo_id in by_sha.get(k, []) for k in keys):
                lost.append(a)
        if lost:
            problems.append(
                f"{len(lost)} accepted upload(s) with no photo: {[a.filename for a in lost][:5]}"
            )
        if self.uploader.gave_up:
            problems.append(
                f"{len(self.uploader.gave_up)} upload(s) never accepted: "
                f"{self.uploader.gave_up[:3]}"
            )
        live = [p["_id"] for p in photos if p.get("status") != "deleting"]
        for endpoint in self.receiver.endpoints.values():
            missing = [pid for pid in live if pid not in endpoint.photos]
            if missing:
                problems.append(
                    f"endpoint {endpoint.name}: {len(missing)} of {len(live)} photo.uploaded "
                    "not delivered"
                )
            again = {pid: ids for pid, ids in endpoint.photos.items() if len(ids) > 1}
            if again:
                problems.append(
                    f"endpoint {endpoint.name}: {len(again)} photo(s) announced under more "
                    "than one webhook-id"
                )
            if endpoint.bad_signatures:
                problems.append(f"endpoint {endpoint.name}: {endpoint.bad_signatures} bad sigs")
            if endpoint.junk:
                problems.append(f"endpoint {endpoint.name}: {endpoint.junk} junk delivered")
        counts = Counter(p["event_id"] for p in photos)
        async for event in self.db.events.find({"_id": {"$in": self.events}}):
            if event.get("photo_count", 0) != counts[event["_id"]]:
                problems.append(
                    f"event {event['_id']}: photo_count {event.get('photo_count')} but "
                    f"{counts[event['_id']]} stored"
                )
        if self.uploader.statuses.get("500"):
            problems.append(f"{self.uploader.statuses['500']} answer(s) 500")
        return problems

    async def check(self, fault_end: float | None = None) -> None:
        """The invariants after a fault: a fresh upload (the endpoints are not stalled), then
        poll until everything holds; then the orphan sweep; the time it took is recorded."""
        fault_end = fault_end or time.monotonic()
        probe = await self.uploader.batch(
            self.events[0], [(f"probe-{uuid.uuid4().hex[:8]}.jpg", unique_jpeg())]
        )
        if not probe:
            self.problems.append("the probe upload after the fault was not accepted")
        last: list[str] = []

        checking = time.monotonic()

        async def holds() -> bool:
            nonlocal last
            last = await self.problems_now()
            if self.uploader.gave_up or self.uploader.statuses.get("500"):
                # Final: no waiting makes these hold.
                raise AssertionError("final")
            return not last

        try:
            _, when = await poll(holds, RECOVERY_BOUND_S, interval=1.0)
        except AssertionError:
            self.problems.extend(last)
            self.checked = True
            raise AssertionError(
                f"{self.name}: invariants did not hold {RECOVERY_BOUND_S:.0f}s after the "
                f"fault:\n  " + "\n  ".join(last)
            ) from None
        self.recovery_s = round(max(0.0, when - fault_end), 1)
        sweeping = time.monotonic()
        swept = await self.sweep(dry_run=False)
        if swept is None:
            self.problems.append("no orphan sweep (`darkroom orphans sweep` failed)")
        else:
            self.orphans_found = swept
            # A sweep that found nothing is its own proof; otherwise a second look must be empty.
            remaining = await self.sweep(dry_run=True) if swept else 0
            if remaining:
                self.problems.append(f"{remaining} orphan(s) left after a sweep")
        self.checked = True
        self.notes.append(
            f"checker: invariants polled {sweeping - checking:.1f}s, "
            f"sweep {time.monotonic() - sweeping:.1f}s"
        )
        assert not self.problems, "\n".join(self.problems)

    async def sweep(self, *, dry_run: bool) -> int | None:
        args = [str(Path(sys.executable).parent / "darkroom"), "orphans", "sweep"]
        args += ["--grace-seconds", "0"] + (["--dry-run"] if dry_run else [])
        proc = await asyncio.create_subprocess_exec(
            *args,
            env=self.cli_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        if proc.returncode != 0:
            self.notes.append(f"orphans sweep: exit {proc.returncode}: {err.decode()[-300:]}")
            return None
        report = json.loads(out)
        return len(report.get("orphan_objects", [])) + len(report.get("orphan_uploads", []))

    def record(self, outcome: str, duration_s: float) -> None:
        REPORT.append(
            {
                "case": self.name,
                "injected": self.injected,
                "outcome": outcome,
                "uploads_accepted": len(self.uploader.accepted),
                "photos_stored": self.photos_stored,
                "deliveries_received": self.receiver.delivered,
                "duplicate_deliveries": self.receiver.duplicates,
                "orphans_found": self.orphans_found,
                "recovery_s": self.recovery_s,
                "answers": dict(sorted(self.uploader.statuses.items())),
                "problems": self.problems[:10],
                "notes": self.notes,
                "duration_s": round(duration_s, 1),
            }
        )


async def wait_accepted(uploader: Uploader, n: int, timeout: float = 60) -> None:
    async def enough() -> bool:
        return len(uploader.accepted) >= n

    await poll(enough, timeout, interval=0.05)


async def readiness(url: str) -> int | None:
    """The status /readyz answers now (None: no answer)."""
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=5)) as resp,
        ):
            return resp.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


def freeze(process: Any) -> None:
    os.kill(process.pid, signal.SIGSTOP)


def thaw(process: Any) -> None:
    os.kill(process.pid, signal.SIGCONT)


def jitter() -> float:
    return random.uniform(0.0, 0.3)

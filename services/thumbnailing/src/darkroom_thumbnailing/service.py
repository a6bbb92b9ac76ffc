"""On ``photo.uploaded``: render thumbnail and hero, record dimensions and capture date, publish
``photo.processed``. Idempotent: a photo already processed is acknowledged without work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from darkroom_kit import records
from darkroom_kit.imaging import ImageRefused
from darkroom_kit.messaging import Envelope, Message, Reject, Retry
from darkroom_kit.mongo import Document
from darkroom_kit.outbox import WITHOUT_OUTBOXES
from darkroom_kit.payloads import PhotoUploaded
from darkroom_kit.pool import JobTimedOut, PoolRestarted
from darkroom_kit.statuses import PhotoKind, PhotoStatus
from darkroom_kit.storage import ObjectNotFound, StorageUnavailable
from darkroom_kit.stored.photos import PhotoRecord
from darkroom_kit.video import poster_frame
from pymongo import ReturnDocument

from darkroom_thumbnailing.deps import Deps
from darkroom_thumbnailing.render import Rendered, render_variants

log = logging.getLogger(__name__)

# Where a video's poster frame is taken (a shorter clip gives its first frame).
POSTER_AT_SECONDS = 1.0

# Refusals still dead-lettered: a render that crashed on every attempt may be this file (an
# allocation over the memory bound) or a broken rendering setup, which an operator must see.
# Every other refusal is the file's own (too many pixels, corrupt, unsupported format, too slow
# to render, the original gone): a counted outcome, acknowledged, not an alert.
DEAD_LETTERED_REFUSALS = frozenset({"render_crashed"})


class Thumbnailer:
    def __init__(self, deps: Deps) -> None:
        settings = deps.settings
        # The attempt after the last retry blames a crashed render on this file.
        self._retries = len(settings.retry_delays_ms)
        self._grace_ms = settings.outbox_grace_ms
        self._photos = deps.db[records.PHOTOS]
        self._store = deps.store
        self._pool = deps.pool
        self._outbox = deps.outbox
        self._metrics = deps.metrics
        self._topology = deps.topology
        self._spec = deps.render_spec
        self._base_url = settings.public_base_url
        self._timeout = settings.render_timeout_seconds
        self._in_memory_max = settings.in_memory_original_bytes

    async def handle(self, message: Message[PhotoUploaded]) -> None:
        found = await self._photos.find_one({"_id": message.payload.photo.id}, WITHOUT_OUTBOXES)
        if found is None:
            return  # deleted
        doc = PhotoRecord.of(found)
        if doc.status is not PhotoStatus.UPLOADED:
            return  # being deleted, or a duplicate delivery of work already done
        try:
            async with self._source(doc) as (data, duration_ms):
                rendered = await self._render(data, message.attempt)
        except ImageRefused as exc:
            # Everything that can never succeed for this file ends here, once: marked on the
            # photo with its reason, counted, acknowledged, not retried.
            await self._fail(doc, exc.code, exc.detail)
            self._metrics.refused(exc.code)
            if exc.code in DEAD_LETTERED_REFUSALS:
                raise Reject(str(exc)) from None
            return
        await self._store_variants(found, doc, rendered, duration_ms)
        self._metrics.rendered()

    @contextlib.asynccontextmanager
    async def _source(self, doc: PhotoRecord) -> AsyncIterator[tuple[bytes | Path, int | None]]:
        """What to render: the original (its bytes, or past ``in_memory_original_bytes`` a
        temporary file, so a big original is never held whole here nor copied whole to a
        rendering process), or a video's poster frame (and its duration)."""
        try:
            if doc.kind is PhotoKind.VIDEO:
                url = await self._store.presigned_get(doc.original_key)
                poster = await poster_frame(url, POSTER_AT_SECONDS, self._timeout)
                source: tuple[bytes | Path, int | None] = (poster.png, poster.duration_ms)
            elif doc.size <= self._in_memory_max:
                source = (await self._store.get_bytes(doc.original_key), None)
            else:
                with tempfile.TemporaryDirectory(prefix="darkroom-original-") as folder:
                    path = Path(folder) / "original"
                    await self._download(doc.original_key, path)
                    yield path, None
                return
        except ObjectNotFound:
            raise ImageRefused("original_missing", "the stored original is gone") from None
        except StorageUnavailable as exc:
            raise Retry(f"storage: {exc}") from exc
        yield source

    async def _download(self, key: str, path: Path) -> None:
        """``key`` into ``path``, a chunk at a time (writes off the event loop)."""
        with path.open("wb") as out:
            async with self._store.open_stream(key) as (_, chunks):
                async for chunk in chunks:
                    await asyncio.to_thread(out.write, chunk)

    async def _render(self, data: bytes | Path, attempt: int) -> Rendered:
        try:
            return await self._pool.run(self._timeout, render_variants, data, self._spec)
        except JobTimedOut:
            raise ImageRefused(
                "render_timeout", f"rendering took over {self._timeout:g}s"
            ) from None
        except PoolRestarted as exc:
            # A worker died: this file's render (an allocation over the memory bound kills the
            # process) or another's time limit. Retried; after the last retry it is this file.
            if attempt > self._retries:
                raise ImageRefused(
                    "render_crashed", "the rendering process died every time"
                ) from None
            raise Retry(f"render pool: {exc}") from None

    async def _store_variants(
        self,
        stored: Document,
        doc: PhotoRecord,
        rendered: Rendered,
        duration_ms: int | None = None,
    ) -> None:
        """``stored`` is the document as read (the public view of the processed photo is made
        from it), ``doc`` the same read as its record."""
        variants: dict[str, dict[str, object]] = {}
        try:
            for v in rendered.variants:
                key = records.variant_key(doc.event_id, doc.id, v.name, v.extension)
                info = await self._store.put_bytes(key, v.data, v.content_type)
                variants[v.name] = {
                    "key": key,
                    "etag": info.etag,
                    "size": info.size,
                    "width": v.width,
                    "height": v.height,
                    "content_type": v.content_type,
                }
        except StorageUnavailable as exc:
            raise Retry(f"storage: {exc}") from exc
        facts = rendered.facts
        mine = {
            "width": facts.width,
            "height": facts.height,
            "captured_at_ms": facts.captured_at_ms,
            "duration_ms": duration_ms,
            "variants": variants,
            "status": PhotoStatus.PROCESSED,
            "status_reason": None,
        }
        processed = {**stored, **mine}
        message = Envelope.new(
            records.PHOTO_PROCESSED,
            {
                "photo": records.photo_public(processed, self._base_url),
                "variants": {
                    k: {n: v[n] for n in ("size", "width", "height", "content_type")}
                    for k, v in variants.items()
                },
            },
        )
        ops = self._outbox.push(self._topology.events, [message], self._grace_ms)
        # Narrow $set of the fields this service owns.
        ops["$set"].update(mine)
        updated = await self._photos.find_one_and_update(
            {"_id": doc.id, "status": PhotoStatus.UPLOADED},
            ops,
            return_document=ReturnDocument.AFTER,
        )
        if updated is None:
            kept = await self._photos.find_one(
                {"_id": doc.id, "status": {"$ne": PhotoStatus.DELETING}}, {"_id": 1}
            )
            if kept is None:
                # Deleted while we rendered: do not leave orphan variants behind.
                await self._store.delete_many([str(v["key"]) for v in variants.values()])
            return
        await self._outbox.flush(self._photos, doc.id, self._outbox.pending_of(updated))

    async def _fail(self, doc: PhotoRecord, code: str, detail: str) -> None:
        log.warning("photo refused: %s", detail, extra={"photo_id": doc.id, "code": code})
        await self._photos.update_one(
            {"_id": doc.id, "status": PhotoStatus.UPLOADED},
            {
                "$set": {
                    "status": PhotoStatus.FAILED,
                    "status_reason": code,
                    "status_detail": detail,
                }
            },
        )

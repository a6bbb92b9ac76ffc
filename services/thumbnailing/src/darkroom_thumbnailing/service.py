"""On ``photo.uploaded``: render thumbnail and hero, record dimensions and capture date, publish
``photo.processed``. Idempotent: a photo already processed is acknowledged without work."""

from __future__ import annotations

import logging

from darkroom_kit import outbox, records
from darkroom_kit.imaging import ImageRefused
from darkroom_kit.messaging import Envelope, Reject, Retry, Topology
from darkroom_kit.mongo import Database, Document
from darkroom_kit.outbox import Outbox
from darkroom_kit.pool import JobTimedOut, PoolRestarted, RenderPool
from darkroom_kit.storage import ObjectNotFound, S3ObjectStore, StorageUnavailable
from darkroom_kit.video import poster_frame
from pymongo import ReturnDocument

from darkroom_thumbnailing.render import Rendered, RenderSpec, render_variants

log = logging.getLogger(__name__)

GRACE_MS = 10_000
# Where a video's poster frame is taken (a shorter clip gives its first frame).
POSTER_AT_SECONDS = 1.0


class Thumbnailer:
    def __init__(
        self,
        db: Database,
        store: S3ObjectStore,
        pool: RenderPool,
        outbox_: Outbox,
        topology: Topology,
        spec: RenderSpec,
        base_url: str,
        timeout_seconds: float,
        retries: int,
    ) -> None:
        self._retries = retries
        self._photos = db[records.PHOTOS]
        self._store = store
        self._pool = pool
        self._outbox = outbox_
        self._topology = topology
        self._spec = spec
        self._base_url = base_url
        self._timeout = timeout_seconds

    async def handle(self, envelope: Envelope, attempt: int) -> None:
        photo_id = envelope.data["photo"]["id"]
        doc = await self._photos.find_one({"_id": photo_id}, {outbox.OUTBOX: 0})
        if doc is None or doc["status"] in ("deleting", "processed", "failed"):
            return  # deleted, or a duplicate delivery of work already done
        try:
            data, duration_ms = await self._source(doc)
            rendered = await self._render(data, attempt)
        except ImageRefused as exc:
            # Everything that can never succeed for this file ends here, once: marked on the
            # photo, dead-lettered, not retried.
            await self._fail(doc, exc.code, exc.detail)
            raise Reject(str(exc)) from None
        await self._store_variants(doc, rendered, duration_ms)

    async def _source(self, doc: Document) -> tuple[bytes, int | None]:
        """The bytes to render: the original, or a video's poster frame (and its duration)."""
        try:
            if doc.get("kind", "image") == "video":
                url = await self._store.presigned_get(doc["original_key"])
                poster = await poster_frame(url, POSTER_AT_SECONDS, self._timeout)
                return poster.png, poster.duration_ms
            return await self._store.get_bytes(doc["original_key"]), None
        except ObjectNotFound:
            raise ImageRefused("original_missing", "the stored original is gone") from None
        except StorageUnavailable as exc:
            raise Retry(f"storage: {exc}") from exc

    async def _render(self, data: bytes, attempt: int) -> Rendered:
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
        self, doc: Document, rendered: Rendered, duration_ms: int | None = None
    ) -> None:
        variants: dict[str, dict[str, object]] = {}
        try:
            for v in rendered.variants:
                key = records.variant_key(doc["event_id"], doc["_id"], v.name, v.extension)
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
        processed = {
            **doc,
            "width": facts.width,
            "height": facts.height,
            "captured_at_ms": facts.captured_at_ms,
            "duration_ms": duration_ms,
            "variants": variants,
            "status": "processed",
        }
        message = Envelope.new(
            records.PHOTO_PROCESSED,
            {
                "photo": records.photo_public(processed, self._base_url),
                "variants": {k: {"key": v["key"], "size": v["size"]} for k, v in variants.items()},
            },
        )
        ops = outbox.push(self._topology.events, [message], GRACE_MS)
        # Narrow $set of the fields this service owns.
        ops["$set"].update(
            {
                "width": facts.width,
                "height": facts.height,
                "captured_at_ms": facts.captured_at_ms,
                "duration_ms": duration_ms,
                "variants": variants,
                "status": "processed",
                "status_reason": None,
            }
        )
        updated = await self._photos.find_one_and_update(
            {"_id": doc["_id"], "status": "uploaded"}, ops, return_document=ReturnDocument.AFTER
        )
        if updated is None:
            current = await self._photos.find_one({"_id": doc["_id"]}, {"status": 1})
            if current is None or current["status"] == "deleting":
                # Deleted while we rendered: do not leave orphan variants behind.
                await self._store.delete_many([str(v["key"]) for v in variants.values()])
            return
        await self._outbox.flush(self._photos, doc["_id"], outbox.pending_of(updated))

    async def _fail(self, doc: Document, code: str, detail: str) -> None:
        log.warning("photo refused: %s", detail, extra={"photo_id": doc["_id"], "code": code})
        await self._photos.update_one(
            {"_id": doc["_id"], "status": "uploaded"},
            {"$set": {"status": "failed", "status_reason": code, "status_detail": detail}},
        )

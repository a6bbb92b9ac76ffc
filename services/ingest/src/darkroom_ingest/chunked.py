"""Chunked, resumable uploads: chunk i is S3 multipart part i+1.

Chunks arrive in any order and in parallel; re-sending one replaces it (never a 409). Each chunk is
checked (size, optional CRC32C / SHA-256) before it is kept. The upload's record in MongoDB says
which chunks arrived, so a client resumes after any crash, including the API's. Completion is a
compare-and-swap on the record: concurrent or repeated completes create one photo and all get it.
Uploads not completed in time are aborted by a sweep (well inside MinIO's own 24 h purge).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import google_crc32c
from darkroom_kit import records
from darkroom_kit.clock import ms_to_iso, now_ms
from darkroom_kit.ids import new_id
from darkroom_kit.lease import RELEASED, Lease
from darkroom_kit.mongo import Database, Document
from darkroom_kit.problems import FieldError, Problem, not_found
from darkroom_kit.storage import (
    ObjectNotFound,
    PartBody,
    S3ObjectStore,
    StorageError,
    StoredPart,
)
from pymongo import ASCENDING, ReturnDocument

from darkroom_ingest import filenames, sniff
from darkroom_ingest.photos import PhotoService, ensure_accepts_uploads
from darkroom_ingest.settings import IngestSettings
from darkroom_ingest.stores import Conflict
from darkroom_ingest.uploads import StoredFile

log = logging.getLogger(__name__)

UPLOADS = "uploads"
# A complete holds the upload by a lease its process renews while it works (lock_lease_seconds),
# so a complete whose process died is taken over within seconds. A record written before leases
# existed carries only ``completing_ms``: its process (the previous version) does not renew, so it
# keeps the old rule: taken over once this old.
STALE_COMPLETING_MS = 5 * 60 * 1000
# A complete whose lease ran out this long ago, and that no client asked for again, is finished
# by the sweep (a client's own retry normally comes much sooner).
ABANDONED_COMPLETE_MS = 60_000
MAX_PARTS = 10_000  # S3's limit


@dataclass(frozen=True, slots=True)
class Digests:
    crc32c: str | None = None  # base64 of the big-endian CRC32C
    sha256: str | None = None  # base64 of the SHA-256


def parse_digest_headers(content_digest: str | None, crc32c_header: str | None) -> Digests:
    """``Content-Digest: sha-256=:<b64>:, crc32c=:<b64>:`` (RFC 9530 style) and/or
    ``X-Checksum-CRC32C: <b64>``."""
    crc, sha = crc32c_header, None
    for item in (content_digest or "").split(","):
        alg, sep, value = item.strip().partition("=")
        if not sep:
            continue
        value = value.strip().strip(":")
        match alg.strip().lower():
            case "sha-256":
                sha = value
            case "crc32c":
                crc = value
    return Digests(crc.strip() if crc else None, sha)


def upload_out(doc: Document, base_url: str) -> dict[str, Any]:
    parts = doc.get("parts") or {}
    received = sorted(int(i) for i in parts)
    return {
        "upload_id": doc["_id"],
        "event_id": doc["event_id"],
        "filename": doc["filename"],
        "size": doc["size"],
        "mime_type": doc["mime_type"],
        "chunk_size": doc["chunk_size"],
        "chunk_count": doc["chunk_count"],
        "state": doc["state"],
        "expires_at": ms_to_iso(doc["expires_ms"]) or "",
        "received_bytes": sum(p["size"] for p in parts.values()),
        "chunks": [{"index": i, **_part_out(parts[str(i)])} for i in received],
        "missing": [i for i in range(doc["chunk_count"]) if str(i) not in parts],
        "photo_id": doc.get("photo_id"),
        "error": doc.get("error"),
        "status_url": f"{base_url}/v1/uploads/{doc['_id']}",
    }


def _part_out(part: Document) -> dict[str, Any]:
    return {"size": part["size"], "crc32c": part.get("crc32c"), "sha256": part.get("sha256")}


class ChunkedUploads:
    def __init__(
        self, db: Database, store: S3ObjectStore, photos: PhotoService, settings: IngestSettings
    ) -> None:
        self.col = db[UPLOADS]
        self._store = store
        self._photos = photos
        self._settings = settings
        # Chunked uploads take every accepted image type and the videos.
        self._accepted_types = set(settings.allowed_types) | set(settings.allowed_video_types)

    async def ensure_indexes(self) -> None:
        await self.col.create_index([("state", ASCENDING), ("expires_ms", ASCENDING)])

    # ---- create ------------------------------------------------------------------------------

    async def create(
        self, event: Document, filename: str, size: int, mime_type: str, sha256: str | None
    ) -> Document:
        settings = self._settings
        try:
            name = filenames.validate_filename(filename)
        except filenames.InvalidFilename as exc:
            raise Problem(
                422,
                "invalid_filename",
                "The file name is not accepted",
                str(exc),
                errors=[FieldError("/filename", str(exc), "invalid_filename")],
            ) from None
        declared = sniff.BY_CONTENT_TYPE.get(mime_type)
        kind = declared.name if declared is not None else None
        allowed = self._accepted_types
        if kind is None or kind not in allowed:
            raise Problem(
                422,
                "unsupported_type",
                "This type is not accepted",
                "Allowed: "
                + ", ".join(sorted(t.content_type for t in sniff.ALL_TYPES if t.name in allowed)),
                errors=[FieldError("/mime_type", "not an accepted type", "unsupported_type")],
            )
        limit = (
            settings.max_video_bytes
            if mime_type.startswith("video/")
            else settings.max_chunked_image_bytes
        )
        if size > limit:
            raise Problem(
                413,
                "file_too_large",
                "The file is too large",
                f"{mime_type} files are limited to {limit} bytes.",
                errors=[FieldError("/size", f"at most {limit}", "file_too_large")],
            )
        ensure_accepts_uploads(event)
        chunk_size = settings.upload_chunk_bytes
        chunk_count = max(1, -(-size // chunk_size))
        if chunk_count > MAX_PARTS:
            chunk_size = -(-size // MAX_PARTS)
            chunk_count = -(-size // chunk_size)
        photo_id = new_id("ph")
        key = records.original_key(event["_id"], photo_id)
        s3_upload_id = await self._store.create_multipart(key, mime_type)
        now = now_ms()
        doc: Document = {
            "_id": new_id("up"),
            "event_id": event["_id"],
            "event_slug": event["slug"],
            "photo_id": photo_id,
            "key": key,
            "s3_upload_id": s3_upload_id,
            "filename": name,
            "size": size,
            "mime_type": mime_type,
            "sha256": sha256,
            "chunk_size": chunk_size,
            "chunk_count": chunk_count,
            "state": "open",
            "parts": {},
            "created_ms": now,
            "expires_ms": now + int(settings.upload_expiry_seconds * 1000),
        }
        await self.col.insert_one(doc)
        return doc

    async def get(self, upload_id: str, *, with_parts: bool = True) -> Document:
        # The parts map grows with every chunk: a chunk PUT leaves it out, or each PUT would
        # decode all earlier chunks' records (quadratic over a 10 GB upload).
        projection = None if with_parts else {"parts": 0, "head": 0}
        doc = await self.col.find_one({"_id": upload_id}, projection)
        if doc is None:
            raise not_found("upload", upload_id)
        return doc

    # ---- chunks ------------------------------------------------------------------------------

    def _check_open(self, doc: Document) -> None:
        if doc["state"] == "open" and doc["expires_ms"] <= now_ms():
            raise Problem(
                410,
                "upload_expired",
                "The upload has expired",
                "Start a new upload; chunks are kept for a limited time.",
            )
        if doc["state"] != "open":
            raise Problem(
                409,
                "upload_not_open",
                f"The upload is {doc['state']}",
                "Chunks can be sent only while the upload is open.",
                extra={"state": doc["state"]},
            )

    async def put_chunk(
        self,
        doc: Document,
        index: int,
        content_length: int | None,
        digests: Digests,
        body: AsyncIterator[bytes],
    ) -> dict[str, Any]:
        upload_id = doc["_id"]
        self._check_open(doc)
        count, chunk_size = doc["chunk_count"], doc["chunk_size"]
        if not 0 <= index < count:
            raise Problem(
                404, "chunk_out_of_range", "No such chunk", f"Chunks are numbered 0 to {count - 1}."
            )
        expected = chunk_size if index < count - 1 else doc["size"] - chunk_size * (count - 1)
        if content_length is None:
            raise Problem(
                411,
                "length_required",
                "Send Content-Length",
                f"Chunk {index} must be exactly {expected} bytes.",
            )
        if content_length != expected:
            raise Problem(
                400,
                "wrong_chunk_size",
                "The chunk has the wrong size",
                f"Chunk {index} must be exactly {expected} bytes, not {content_length}.",
                extra={"expected_size": expected},
            )
        part = PartBody()
        crc = 0
        sha = hashlib.sha256() if digests.sha256 else None
        head = b""
        async for piece in body:
            if index == 0 and len(head) < sniff.SNIFF_BYTES:
                head += bytes(piece[: sniff.SNIFF_BYTES])
            part.append(piece)
            crc = google_crc32c.extend(crc, piece)
            if sha is not None:
                sha.update(piece)
        if len(part) != expected:
            raise Problem(
                400,
                "wrong_chunk_size",
                "The chunk ended early",
                f"Received {len(part)} of {expected} bytes; send it again.",
            )
        crc_b64 = base64.b64encode(crc.to_bytes(4, "big")).decode()
        sha_b64 = base64.b64encode(sha.digest()).decode() if sha is not None else None
        if digests.crc32c is not None and digests.crc32c != crc_b64:
            raise _mismatch("crc32c", index)
        if digests.sha256 is not None and digests.sha256 != sha_b64:
            raise _mismatch("sha-256", index)
        stored = await self._store.upload_part(doc["key"], doc["s3_upload_id"], index + 1, part)
        record = {
            "etag": stored.etag,
            "size": stored.size,
            "crc32c": crc_b64,
            "sha256": sha_b64,
            "at_ms": now_ms(),
        }
        update: Document = {f"parts.{index}": record}
        if index == 0:
            update["head"] = head[: sniff.SNIFF_BYTES]
        result = await self.col.update_one({"_id": upload_id, "state": "open"}, {"$set": update})
        if result.matched_count == 0:
            raise Problem(
                409,
                "upload_not_open",
                "The upload is no longer open",
                "It was completed, cancelled or expired while this chunk arrived.",
            )
        return {"index": index, **_part_out(record)}

    # ---- complete ----------------------------------------------------------------------------

    async def complete(self, upload_id: str) -> Document:
        """Create the photo exactly once; concurrent and repeated calls all get it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.complete_wait_seconds
        lease_ms = int(self._settings.lock_lease_seconds * 1000)
        pause = 0.05
        while True:
            doc = await self.get(upload_id)
            if doc["state"] == "completed":
                return await self._photo_of(doc)
            if doc["state"] == "failed":
                raise _stored_problem(doc)
            if doc["state"] in ("aborted", "expired"):
                self._check_open(doc)
            missing = [i for i in range(doc["chunk_count"]) if str(i) not in doc["parts"]]
            if doc["state"] == "open" and missing:
                raise Problem(
                    409,
                    "missing_chunks",
                    "Some chunks have not arrived",
                    f"{len(missing)} chunk(s) missing; send them, then complete again.",
                    extra={"missing": missing[:1000]},
                )
            if doc["state"] == "open" and doc["expires_ms"] <= now_ms():
                self._check_open(doc)
            now = now_ms()
            lease = Lease(self.col, upload_id, lease_ms)
            # Under $and: nx-27017 matches other documents when a single-document update's
            # filter has fields beside a top-level $or.
            claimed = await self.col.find_one_and_update(
                {
                    "$and": [
                        {"_id": upload_id},
                        {
                            "$or": [
                                {"state": "open"},
                                {
                                    "$and": [
                                        {"state": "completing"},
                                        Lease.free(now, "completing_ms", STALE_COMPLETING_MS),
                                    ]
                                },
                            ]
                        },
                    ]
                },
                {"$set": {"state": "completing", "completing_ms": now, **lease.fields(now)}},
                return_document=ReturnDocument.AFTER,
            )
            if claimed is not None:
                return await self._finish(claimed, lease)
            # Another request is completing it: wait for its answer while its lease is renewed,
            # and take over once it is not (its process died).
            if loop.time() + pause > deadline:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
        raise Problem(
            503,
            "complete_in_progress",
            "Completion is still in progress",
            "Ask again shortly.",
            headers={"Retry-After": "2"},
        )

    async def _finish(self, doc: Document, lease: Lease) -> Document:
        # The lease is renewed while the photo is made; the writes that end the completion come
        # after, so no renewal races them.
        try:
            async with lease:
                photo = await self._make_photo(doc)
        except Problem as problem:
            await self._fail(doc, lease, problem)
            raise
        except StorageError:
            # Let the client try completing again.
            await self.col.update_one(
                {**lease.mine(), "state": "completing"},
                {"$set": {"state": "open"}, "$unset": RELEASED},
            )
            raise
        await self._mark_completed(doc["_id"])
        return photo

    async def _make_photo(self, doc: Document) -> Document:
        # A completer that died after creating the photo but before recording it: the photo is
        # there, so only the record is finished (never a second photo, never counted twice).
        existing = await self._photos.photos.col.find_one({"_id": doc["photo_id"]})
        if existing is not None:
            return existing
        kind = sniff.sniff(bytes(doc.get("head") or b""))
        if kind is None or kind.name not in self._accepted_types:
            raise Problem(
                422,
                "unsupported_type",
                "The content is not an accepted type",
                "The file's bytes are not an accepted image or video format.",
            )
        parts = [
            StoredPart(int(i) + 1, p["etag"], p["size"])
            for i, p in sorted(doc["parts"].items(), key=lambda kv: int(kv[0]))
        ]
        try:
            await self._store.complete_multipart(doc["key"], doc["s3_upload_id"], parts)
        except ObjectNotFound:
            # Completed by an earlier attempt that died before recording it.
            info = await self._store.head(doc["key"])
            if info.size != doc["size"]:
                raise
        if doc.get("sha256"):
            await self._verify_sha256(doc)
        stored = StoredFile(
            doc["photo_id"],
            doc["key"],
            filenames.with_extension(doc["filename"], kind.extension),
            doc["filename"],
            kind,
            doc["size"],
            doc.get("sha256"),
        )
        event = await self._photos.events.get(doc["event_id"])
        if event is None:
            raise not_found("event", doc["event_id"])
        try:
            photos = await self._photos.commit_batch(event, [stored], None)
        except Conflict:
            # Another completer created it first: one that took over a lease this one lost
            # (its renewals failed for longer than the lease). The photo is the same one.
            landed = await self._photos.photos.col.find_one({"_id": doc["photo_id"]})
            if landed is None:
                raise
            return landed
        return photos[0]

    async def _mark_completed(self, upload_id: str) -> None:
        # Unconditional: the photo exists, whichever completer made it.
        await self.col.update_one(
            {"_id": upload_id},
            {
                "$set": {"state": "completed", "completed_ms": now_ms()},
                "$unset": {"head": "", **RELEASED},
            },
        )

    async def _verify_sha256(self, doc: Document) -> None:
        digest = hashlib.sha256()
        async with self._store.open_stream(doc["key"]) as (_, chunks):
            async for chunk in chunks:
                digest.update(chunk)
        if digest.hexdigest() != doc["sha256"]:
            await self._store.delete_many([doc["key"]])
            raise Problem(
                422,
                "checksum_mismatch",
                "The file's SHA-256 does not match",
                "The assembled file differs from the sha256 given at creation; nothing was kept.",
                errors=[FieldError("/sha256", "does not match the content", "checksum_mismatch")],
            )

    async def _fail(self, doc: Document, lease: Lease, problem: Problem) -> None:
        failed = await self.col.update_one(
            {**lease.mine(), "state": "completing"},
            {
                "$set": {
                    "state": "failed",
                    "error": {
                        "status": problem.status,
                        "code": problem.code,
                        "detail": problem.detail or problem.title,
                    },
                },
                "$unset": RELEASED,
            },
        )
        # A completer that lost its lease leaves the upload to the one that took it over (aborting
        # the multipart upload would pull its parts from under it).
        if failed.matched_count == 1:
            await self._store.abort_multipart(doc["key"], doc["s3_upload_id"])

    async def _photo_of(self, doc: Document) -> Document:
        photo = await self._photos.photos.col.find_one({"_id": doc["photo_id"]})
        if photo is None:
            raise not_found("photo", doc["photo_id"])
        return photo

    # ---- cancel and expire -------------------------------------------------------------------

    async def cancel(self, upload_id: str) -> None:
        doc = await self.get(upload_id)
        cancelled = await self.col.find_one_and_update(
            {"_id": upload_id, "state": "open"}, {"$set": {"state": "aborted"}}
        )
        if cancelled is None:
            if doc["state"] == "aborted":
                return
            raise Problem(
                409,
                "upload_not_open",
                f"The upload is {doc['state']}",
                "Only an open upload can be cancelled.",
            )
        await self._store.abort_multipart(doc["key"], doc["s3_upload_id"])

    async def expire_due(self, limit: int = 500) -> int:
        expired = 0
        for _ in range(limit):
            doc = await self.col.find_one_and_update(
                {"state": "open", "expires_ms": {"$lt": now_ms()}}, {"$set": {"state": "expired"}}
            )
            if doc is None:
                break
            await self._store.abort_multipart(doc["key"], doc["s3_upload_id"])
            expired += 1
        return expired + await self.finish_abandoned(limit)

    async def finish_abandoned(self, limit: int = 100) -> int:
        """Completes whose process died and whose client never asked again: the client asked
        for the photo, so it is made (exactly once, as a complete would), rather than the
        upload left "completing" for ever with its object owned by nobody."""
        now = now_ms()
        stale = self.col.find(
            {
                "$and": [
                    {"state": "completing"},
                    Lease.free(now - ABANDONED_COMPLETE_MS, "completing_ms", STALE_COMPLETING_MS),
                ]
            },
            {"_id": 1},
        ).limit(limit)
        finished = 0
        async for doc in stale:
            try:
                photo = await self.complete(doc["_id"])
            except (Problem, StorageError) as exc:
                log.warning(
                    "abandoned complete could not be finished: %s",
                    exc,
                    extra={"upload_id": doc["_id"]},
                )
                continue
            log.info(
                "abandoned complete finished",
                extra={"upload_id": doc["_id"], "photo_id": photo["_id"]},
            )
            finished += 1
        return finished


def _mismatch(algorithm: str, index: int) -> Problem:
    return Problem(
        400,
        "checksum_mismatch",
        "The chunk's checksum does not match",
        f"The {algorithm} of chunk {index} differs from the one sent; nothing was "
        "kept, send the chunk again.",
        errors=[FieldError("Content-Digest", f"{algorithm} mismatch", "checksum_mismatch")],
    )


def _stored_problem(doc: Document) -> Problem:
    error = doc.get("error") or {}
    return Problem(
        int(error.get("status", 409)),
        str(error.get("code", "upload_failed")),
        "The upload failed",
        str(error.get("detail", "")),
    )

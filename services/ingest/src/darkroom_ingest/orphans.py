"""The orphan sweep: objects and multipart uploads under ``events/`` whose record never landed.

Batch uploads write every object before any photo record (a kill in between leaves the objects),
chunked uploads create their S3 multipart upload before the upload record, and thumbnailing may
store a variant just after its photo was deleted. An object is an orphan when

- it is older than the grace period,
- no upload record in state open/completing names its key, and
- its photo id has no photo record at all (a "deleting" tombstone counts: deletion owns it).

An open multipart upload is an orphan when it began before the grace period, its newest part is
older than that too, and no open/completing upload record names its key (aborting one never
touches a completed object under the same key). One without any part is never aborted: it holds
no bytes, and its age is unknown where the server's Initiated is wrong (moto_server).

The grace period is what keeps the sweep away from work in progress: a batch request writes its
objects before its records, so nothing can tell a live batch's object from an orphan except its
age, and the grace must outlast the slowest batch request. Everything else is answered by records,
checked in this order: uploads first, then photos, because a chunked upload records its photo
before it leaves the completing state; read the other way round, a completion between the two
reads would find neither. Two replicas sweeping at once delete the same keys; deleting an
object or aborting an upload that is already gone is not an error in S3.

Listings are read a page (1000) at a time and each page's records are checked with one ``$in``
query per collection. A pass stops after ``max_deletions`` orphans; the next pass goes on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from darkroom_kit import records
from darkroom_kit.clock import ms_to_iso, now_ms
from darkroom_kit.httpapp import REGISTRY
from darkroom_kit.mongo import MONGO_DB, Database
from darkroom_kit.statuses import UploadState
from darkroom_kit.storage import (
    OBJECT_STORE,
    ListedObject,
    ObjectNotFound,
    OpenMultipart,
    S3ObjectStore,
)
from darkroom_kit.stored import Record
from darkroom_kit.stored.uploads import UploadRecord
from prometheus_client import CollectorRegistry, Counter

from darkroom_ingest.chunked import UPLOADS
from darkroom_ingest.web_support import SETTINGS

log = logging.getLogger(__name__)

PREFIX = "events/"
# Upload states whose record still owns its key and its S3 multipart upload.
LIVE_UPLOAD_STATES = [UploadState.OPEN, UploadState.COMPLETING]

# An upload read without what it received (its chunks can be many; the sweep needs its key).
WITHOUT_CHUNKS = {"parts": 0, "head": 0}

# Kinds, as counted in orphan_objects_swept_total (besides records.ORIGINAL, VARIANT and PIECE).
MULTIPART = "multipart_upload"


def swept_counter(registry: CollectorRegistry) -> Counter:
    return Counter(
        "orphan_objects_swept_total",
        "Orphan objects deleted and orphan multipart uploads aborted by the sweep",
        ["kind"],
        registry=registry,
    )


@dataclass
class SweepReport:
    dry_run: bool
    grace_seconds: float
    cutoff_ms: int
    objects_scanned: int = 0
    uploads_scanned: int = 0
    # Older than the grace period but owned by a record: the common case.
    kept_live: int = 0
    kept_young: int = 0
    # Under events/ but not a photo's key: never touched.
    kept_unrecognised: int = 0
    orphan_objects: list[dict[str, Any]] = field(default_factory=list)
    orphan_uploads: list[dict[str, Any]] = field(default_factory=list)
    # The pass stopped at max_deletions; the next one goes on.
    truncated: bool = False

    @property
    def orphans(self) -> int:
        return len(self.orphan_objects) + len(self.orphan_uploads)

    def as_dict(self) -> dict[str, Any]:
        done = not self.dry_run
        return {
            "dry_run": self.dry_run,
            "grace_seconds": self.grace_seconds,
            "older_than": ms_to_iso(self.cutoff_ms),
            "objects_scanned": self.objects_scanned,
            "uploads_scanned": self.uploads_scanned,
            "kept_live": self.kept_live,
            "kept_young": self.kept_young,
            "kept_unrecognised": self.kept_unrecognised,
            "orphan_objects": self.orphan_objects,
            "orphan_uploads": self.orphan_uploads,
            "deleted_objects": len(self.orphan_objects) if done else 0,
            "aborted_uploads": len(self.orphan_uploads) if done else 0,
            "truncated": self.truncated,
        }


class OrphanSweeper:
    def __init__(
        self,
        db: Database,
        store: S3ObjectStore,
        *,
        grace_seconds: float,
        max_deletions: int,
        swept: Counter | None = None,
        clock: Callable[[], int] = now_ms,
        page_size: int = 1000,
    ) -> None:
        self._uploads = db[UPLOADS]
        self._photos = db[records.PHOTOS]
        self._store = store
        self._grace_seconds = grace_seconds
        self._max = max_deletions
        self._swept = swept
        # Injectable because S3 sets LastModified itself: a test cannot backdate an object, but
        # it can sweep from a later "now".
        self._clock = clock
        self._page_size = page_size

    async def sweep(self, *, dry_run: bool = False) -> SweepReport:
        """One bounded pass over the objects, then the multipart uploads."""
        cutoff = self._clock() - int(self._grace_seconds * 1000)
        report = SweepReport(dry_run, self._grace_seconds, cutoff)
        async for page in self._store.iter_objects(PREFIX, self._page_size):
            report.objects_scanned += len(page)
            if not await self._objects_page(page, report):
                break
        if not report.truncated:
            async for uploads in self._store.iter_multipart_uploads(PREFIX, self._page_size):
                report.uploads_scanned += len(uploads)
                if not await self._uploads_page(uploads, report):
                    break
        log.info(
            "orphan sweep%s: %d orphan object(s), %d orphan upload(s) of %d object(s) and "
            "%d upload(s) scanned",
            " (dry run)" if dry_run else "",
            len(report.orphan_objects),
            len(report.orphan_uploads),
            report.objects_scanned,
            report.uploads_scanned,
            extra={
                k: v
                for k, v in report.as_dict().items()
                if k not in ("orphan_objects", "orphan_uploads")
            },
        )
        return report

    def _room(self, report: SweepReport) -> int:
        return self._max - report.orphans

    async def _objects_page(self, page: list[ListedObject], report: SweepReport) -> bool:
        """Sweep one listing page; False once the pass is full."""
        candidates: dict[str, tuple[ListedObject, str, str]] = {}
        for obj in page:
            parsed = records.photo_of_key(obj.key)
            if parsed is None:
                report.kept_unrecognised += 1
            elif obj.last_modified_ms > report.cutoff_ms:
                report.kept_young += 1
            else:
                candidates[obj.key] = (obj, *parsed)
        if not candidates:
            return True
        owned = await self._keys_of_live_uploads(candidates)
        recorded = await self._recorded_photos(photo for _, photo, _ in candidates.values())
        # A piece belongs to its upload alone: once the upload is over (its photo may exist),
        # nothing needs it.
        orphans = [
            c
            for key, c in candidates.items()
            if key not in owned and (c[2] == records.PIECE or c[1] not in recorded)
        ]
        report.kept_live += len(candidates) - len(orphans)
        full = len(orphans) >= self._room(report)
        orphans = orphans[: self._room(report)]
        if orphans and not report.dry_run:
            await self._store.delete_many([obj.key for obj, _, _ in orphans])
        for obj, photo_id, kind in orphans:
            log.debug(
                "orphan object %s%s",
                obj.key,
                "" if report.dry_run else " deleted",
                extra={"key": obj.key, "photo_id": photo_id, "kind": kind},
            )
            report.orphan_objects.append(
                {
                    "key": obj.key,
                    "kind": kind,
                    "size": obj.size,
                    "last_modified": ms_to_iso(obj.last_modified_ms),
                }
            )
            if self._swept is not None and not report.dry_run:
                self._swept.labels(kind).inc()
        report.truncated = full
        return not full

    async def _uploads_page(self, page: list[OpenMultipart], report: SweepReport) -> bool:
        old = [u for u in page if u.initiated_ms <= report.cutoff_ms]
        report.kept_young += len(page) - len(old)
        if not old:
            return True
        owned = await self._keys_of_live_uploads(u.key for u in old)
        for upload in old:
            if upload.key in owned:
                report.kept_live += 1
                continue
            if self._room(report) <= 0:
                report.truncated = True
                return False
            # A part stored within the grace period means someone is still writing it (and
            # moto_server reports a fixed 2010 date as every upload's Initiated).
            try:
                last_part = await self._store.last_part_ms(upload.key, upload.upload_id)
            except ObjectNotFound:
                continue  # completed or aborted since the listing
            # One without a part holds no bytes, and its age is unknown where the server's
            # Initiated is not to be trusted: aborting it gains nothing and could fail a batch
            # whose first part is still arriving. (MinIO purges unfinished uploads after 24 h.)
            if last_part is None or last_part > report.cutoff_ms:
                report.kept_young += 1
                continue
            if not report.dry_run:
                await self._store.abort_multipart(upload.key, upload.upload_id)
                if self._swept is not None:
                    self._swept.labels(MULTIPART).inc()
            log.debug(
                "orphan multipart upload %s of %s%s",
                upload.upload_id,
                upload.key,
                "" if report.dry_run else " aborted",
                extra={"key": upload.key, "s3_upload_id": upload.upload_id, "kind": MULTIPART},
            )
            report.orphan_uploads.append(
                {
                    "key": upload.key,
                    "upload_id": upload.upload_id,
                    "initiated": ms_to_iso(upload.initiated_ms),
                    "last_part": ms_to_iso(last_part),
                }
            )
        return True

    async def _keys_of_live_uploads(self, keys: Iterable[str]) -> set[str]:
        wanted = sorted(set(keys))
        if not wanted:
            return set()
        # The state comes first: it is the prefix of the uploads' index, and open or completing
        # uploads are few next to the finished ones.
        # Under $and: nx-27017 mismatches a top-level $or beside other fields. A tus upload's
        # pieces are a plain list of keys: nx-27017 finds no field of an array's sub-documents.
        cursor = self._uploads.find(
            {
                "$and": [
                    {"state": {"$in": LIVE_UPLOAD_STATES}},
                    {
                        "$or": [
                            {"key": {"$in": wanted}},
                            {"piece_keys": {"$in": wanted}},
                        ]
                    },
                ]
            },
            WITHOUT_CHUNKS,
        )
        owned: set[str] = set()
        async for doc in cursor:
            upload = UploadRecord.of(doc)
            owned.add(upload.key)
            owned.update(upload.piece_keys)
        return owned

    async def _recorded_photos(self, photo_ids: Iterable[str]) -> set[str]:
        wanted = sorted(set(photo_ids))
        if not wanted:
            return set()
        cursor = self._photos.find({"_id": {"$in": wanted}}, {"_id": 1})
        return {Record.of(doc).id async for doc in cursor}


ORPHAN_SWEEPER: web.AppKey[OrphanSweeper] = web.AppKey("orphan_sweeper", OrphanSweeper)


async def orphan_sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    """Builds the app's sweeper once MongoDB and S3 are open (after their cleanup contexts)."""
    settings = app[SETTINGS]
    app[ORPHAN_SWEEPER] = OrphanSweeper(
        app[MONGO_DB],
        app[OBJECT_STORE],
        grace_seconds=settings.orphan_grace_seconds,
        max_deletions=settings.orphan_max_deletions,
        swept=swept_counter(app[REGISTRY]),
    )
    yield


async def sweep_pass(app: web.Application) -> None:
    # The sweep logs its own line with every count; None keeps periodic_ctx from adding another.
    await app[ORPHAN_SWEEPER].sweep()

"""S3 prefix imports: an Operation that walks a prefix of a configured import source and makes a
photo of each object, exactly once.

Each object is validated as any upload is (its type sniffed from a ranged read of its head, its
size against the limit of that type, its end checked for truncation, the event's cap), copied to
the photo's original key, and committed through :meth:`PhotoService.commit_batch` like every other
upload, so it gets its ``photo.uploaded`` and the duplicate rules. A source on darkroom's own S3
endpoint is copied server-side (CopyObject; UploadPartCopy past 5 GiB): the bytes never pass
through this service. A source on another endpoint cannot be copied that way, so its objects are
streamed from one to the other in parts (two parts in memory at most).

Exactly once: an object's identity is (source, key, ETag, size), its ``import_ref``, and the photo
id is derived from it. A rerun finds the photos by id and imports nothing twice; a process killed
between a copy and its record leaves an object at the photo's key with no record, which the
resumed walk copies again to the same key (or, if nobody resumes it, the orphan sweep removes).
Every copy and read names the listed ETag (``x-amz-copy-source-if-match``, ``If-Match``), so an
object that changes while it is imported is reported and nothing of it is stored.

The Operation is carried out here, in upload-ingest (the one writer of photos), by whichever
replica holds its lease: the one that took the request starts it at once, and a periodic pass on
every replica claims those whose holder died, which resume from the cursor stored with the
progress (the last key of the last batch recorded). RabbitMQ is not used to carry the work: its
consumer timeout would end a long walk, and a watching import never ends by itself.

A watching import lists its prefix again every ``poll_seconds``. A bucket notification (see
:mod:`darkroom_ingest.import_notifications`) for a key under its prefix wakes it sooner: the
notification adds one to the Operation's stored ``wake_seq`` (whichever replica consumed it), and
the holder, which reads its Operation every second while it sleeps (and is signalled at once when
it runs in the consuming process), starts its next pass when the count went past what its last
pass had seen when it began. The pass is the same walk as a poll's, so the notified object goes
through the same checks and the same exactly-once ``import_ref``; a notification that comes
twice, late or for an object imported already finds the photo and imports nothing. A pass
records in its cursor (``covered``) the count it began with: every wake up to it is handled.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.errors import ServiceError
from darkroom_kit.lease import Lease
from darkroom_kit.metrics import OperationMetrics
from darkroom_kit.mongo import Database
from darkroom_kit.operations import OPEN, Operations, new_operation_id
from darkroom_kit.problems import FieldError
from darkroom_kit.storage import (
    ListedObject,
    ObjectNotFound,
    PreconditionFailed,
    S3ObjectStore,
    StorageError,
    StorageUnavailable,
    endpoint_of,
    open_bucket,
)
from darkroom_kit.stored.events import EventRecord
from darkroom_kit.stored.operations import ImportParams, OperationRecord
from prometheus_client import CollectorRegistry, Counter
from pymongo import ASCENDING

from darkroom_ingest import errors, filenames, sniff
from darkroom_ingest.chunked.machine import Rules
from darkroom_ingest.jobs import IMPORT
from darkroom_ingest.photos import PhotoService, ensure_accepts_uploads
from darkroom_ingest.settings import ImportSource, IngestSettings
from darkroom_ingest.stores import Conflict
from darkroom_ingest.tokens import Principal
from darkroom_ingest.upload_metrics import UploadMetrics
from darkroom_ingest.uploads import StoredFile, object_sha256

log = logging.getLogger(__name__)

NO_OBJECTS = "no objects under the prefix"
# A watching import's later passes look only at objects modified since its previous pass began,
# less this much (clock skew between this process and the S3 server); what they see again is
# recognised (a photo, a reason kept) and not counted twice.
WATCH_SLACK_MS = 10 * 60 * 1000
# Open imports a claim pass looks at (each claimed, or given back when no run slot is free).
CLAIMS_PER_PASS = 50
# A new import is its creator's for this long (it claims it right after creating it): a claim
# pass of another replica in between would take it, a race seen under load.
CREATOR_GRACE_MS = 2_000
# How often a sleeping watch import looks whether it was asked to stop or woken by a
# notification that another replica consumed.
STOP_CHECK_SECONDS = 1.0
# The Operation field a bucket notification increments to wake a watching import.
WAKE_SEQ = "wake_seq"

Outcome = Literal["imported", "skipped", "failed"]

# Reason codes of skipped and failed objects.
ALREADY_IMPORTED = "already_imported"
DUPLICATE = "duplicate"
CHANGED = "changed_while_imported"
GONE = "deleted_while_imported"
EMPTY = "empty_file"
UNSAFE_KEY = "unsafe_key"
UNSUPPORTED = "unsupported_type"
TOO_LARGE = "file_too_large"
TRUNCATED = "truncated_file"
STORAGE = "storage_error"
CAP = "photo_cap_exceeded"
ARCHIVED = "event_archived"


# ---- sources ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    config: ImportSource
    store: S3ObjectStore
    # On darkroom's own endpoint: copied server-side. Elsewhere: streamed.
    server_side: bool

    def prefix(self, prefix: str) -> str:
        return self.config.prefix + prefix


class ImportSources:
    """The configured sources, each with its store, open for the life of the process."""

    def __init__(self, settings: IngestSettings) -> None:
        self._settings = settings
        self._open: dict[str, Source] = {}

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[ImportSources]:
        own = endpoint_of(self._settings.s3_endpoint_url, self._settings.s3_region)
        async with contextlib.AsyncExitStack() as stack:
            for name, config in self._settings.import_sources.items():
                endpoint = config.endpoint_url or self._settings.s3_endpoint_url
                region = config.region or self._settings.s3_region
                access = config.access_key or self._settings.s3_access_key
                secret = config.secret_key or self._settings.s3_secret_key
                store = await stack.enter_async_context(
                    open_bucket(
                        endpoint,
                        config.bucket,
                        access.get_secret_value(),
                        secret.get_secret_value(),
                        region,
                    )
                )
                server_side = endpoint_of(endpoint, region) == own
                self._open[name] = Source(name, config, store, server_side)
            try:
                yield self
            finally:
                self._open.clear()

    def names(self, principal: Principal | None = None) -> list[Source]:
        """The sources (those ``principal`` may import from)."""
        return [
            source
            for _, source in sorted(self._open.items())
            if principal is None or _may_use(principal, source)
        ]

    def get(self, name: str, principal: Principal | None = None) -> Source:
        """A source by name; with ``principal``, only one it may use (others are not found:
        a token bound to an event does not learn of the sources of other events)."""
        source = self._open.get(name)
        if source is None or (principal is not None and not _may_use(principal, source)):
            known = ", ".join(s.name for s in self.names(principal)) or "none is configured"
            raise errors.IMPORT_SOURCE_NOT_FOUND.error(
                f"No import source named {name!r} (known: {known}); GET /v1/import-sources "
                "lists them.",
                errors=[FieldError("/source", "not a configured import source", "not_found")],
            )
        return source


def _may_use(principal: Principal, source: Source) -> bool:
    bound = principal.event_id
    return bound is None or bound in source.config.event_ids


# ---- identities ---------------------------------------------------------------------------------


def import_ref(event_id: str, source: str, obj: ListedObject) -> str:
    """An object's identity for one event: (source, key, ETag, size). An object overwritten is
    another one (new ETag), imported again."""
    digest = hashlib.sha256(json.dumps([source, obj.key, obj.etag, obj.size]).encode()).hexdigest()
    return f"{event_id}:{digest}"


def photo_id_of(ref: str) -> str:
    """The photo an import makes of an object: derived from its identity, so a rerun (or a
    resumed walk) names the same photo and the same object key, never a second one."""
    digest = hashlib.sha256(ref.encode()).digest()[:16]
    return "ph_" + base64.b32encode(digest).decode().rstrip("=").lower()


def _item_id(obj: ListedObject) -> str:
    return hashlib.sha256(f"{obj.key}\0{obj.etag}".encode()).hexdigest()[:20]


# ---- what happened to each object ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    obj: ListedObject
    outcome: Outcome
    code: str | None = None
    reason: str | None = None
    photo_id: str | None = None

    def item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "key": self.obj.key,
            "outcome": self.outcome,
            "code": self.code,
            "reason": self.reason,
        }
        if self.photo_id is not None:
            item["photo_id"] = self.photo_id
        return item


def _skipped(obj: ListedObject, code: str, reason: str, photo_id: str | None = None) -> Result:
    return Result(obj, "skipped", code, reason, photo_id)


def _failed(obj: ListedObject, code: str, reason: str) -> Result:
    return Result(obj, "failed", code, reason)


class Stop(Exception):
    """The walk cannot go on (the event is archived or full): the Operation fails with this."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass
class Walk:
    """Where an import got to: its counts, its cursor and the reasons kept, as stored in its
    Operation after each batch (so a resumed walk starts from there)."""

    created_ms: int
    progress: dict[str, int] = field(
        default_factory=lambda: {"listed": 0, "imported": 0, "skipped": 0, "failed": 0}
    )
    pass_no: int = 0
    after: str = ""
    since_ms: int = 0
    # The wake count (WAKE_SEQ) the last finished pass began with: the notifications it covered.
    covered: int = 0
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    new_items: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, op: OperationRecord) -> Walk:
        walk = cls(op.created_ms)
        walk.progress.update(op.progress)
        if op.cursor:
            cursor = json.loads(op.cursor)
            walk.pass_no = int(cursor.get("pass", 0))
            walk.after = str(cursor.get("after", ""))
            walk.since_ms = int(cursor.get("since_ms", 0))
            walk.covered = int(cursor.get("covered", 0))
        items = op.details.get("items")
        if isinstance(items, dict):
            walk.items = {str(k): v for k, v in items.items() if isinstance(v, dict)}
        return walk

    def cursor(self) -> str:
        return json.dumps(
            {
                "pass": self.pass_no,
                "after": self.after,
                "since_ms": self.since_ms,
                "covered": self.covered,
            }
        )

    def seen(self, obj: ListedObject) -> bool:
        return _item_id(obj) in self.items

    def add(self, result: Result, max_items: int) -> None:
        self.progress["listed"] += 1
        self.progress[result.outcome] += 1
        if result.outcome != "imported" and len(self.items) < max_items:
            item_id = _item_id(result.obj)
            self.items[item_id] = self.new_items[item_id] = result.item()

    def take_new_items(self) -> dict[str, Any]:
        new, self.new_items = self.new_items, {}
        return {f"items.{k}": v for k, v in new.items()}

    def next_pass(self, started_ms: int, covered: int | None = None) -> None:
        self.pass_no += 1
        if covered is not None:
            self.covered = covered
        self.after = ""
        self.since_ms = started_ms - WATCH_SLACK_MS

    def result(self, **extra: Any) -> dict[str, Any]:
        items = sorted(self.items.values(), key=lambda i: str(i.get("key")))
        return {**self.progress, "items": items, **extra}


@dataclass(frozen=True, slots=True)
class ImportMetrics:
    objects: Counter
    bytes: Counter
    notifications: Counter

    @classmethod
    def registered(cls, registry: CollectorRegistry) -> ImportMetrics:
        return cls(
            Counter(
                "import_objects_total",
                "Objects seen by S3 prefix imports, by outcome (imported, skipped, failed)",
                ["outcome"],
                registry=registry,
            ),
            Counter(
                "import_bytes_total",
                "Bytes imported: copied server-side (copy) or streamed between endpoints",
                ["mode"],
                registry=registry,
            ),
            Counter(
                "import_notifications_total",
                "Bucket notifications consumed, by outcome: woke (a watching import), unwatched "
                "(no watching import's prefix has the key), ignored (not an object created)",
                ["outcome"],
                registry=registry,
            ),
        )


# ---- the import ---------------------------------------------------------------------------------


class Importer:
    def __init__(
        self,
        db: Database,
        store: S3ObjectStore,
        photos: PhotoService,
        sources: ImportSources,
        settings: IngestSettings,
        metrics: ImportMetrics,
        *,
        uploads: UploadMetrics,
        operations: OperationMetrics,
    ) -> None:
        self._ops = Operations(db, operations)
        self._ops_col = db[records.OPERATIONS]
        self._photos_col = db[records.PHOTOS]
        self._store = store
        self._photos = photos
        self._sources = sources
        self._rules = Rules.of(settings)
        self._metrics = metrics
        self._uploads = uploads
        self._lease_ms = int(settings.lock_lease_seconds * 1000)
        self._poll_seconds = settings.import_poll_seconds
        self._max_running = settings.import_max_running
        self._batch = settings.import_batch_files
        self._part_bytes = settings.upload_part_bytes
        self._max_items = settings.import_max_reasons
        self._verify_copy_etag = settings.s3_ignores_copy_conditions
        self._outage_tries = settings.import_outage_tries
        self._copies = asyncio.Semaphore(settings.import_concurrency)
        self._running: dict[str, tuple[asyncio.Task[None], Lease]] = {}
        # Those of self._running that walk once (a watch sleeps most of its life: it holds no
        # run slot, or a few watches would keep every new import queued for ever).
        self._one_time: set[str] = set()
        # Set when a notification wakes an import this process carries out (see wake()).
        self._wakes: dict[str, asyncio.Event] = {}
        # Tests: runs for each object after it was listed, before it is read (to change it).
        self.before_read: Callable[[ListedObject], Awaitable[None]] | None = None

    @property
    def sources(self) -> ImportSources:
        return self._sources

    async def ensure_indexes(self) -> None:
        # One photo per object and event even if ids were ever made otherwise (the id derived
        # from the ref is the first guard). Sparse: only imported photos have one.
        await self._photos_col.create_index([("import_ref", ASCENDING)], unique=True, sparse=True)

    # ---- the API's side -------------------------------------------------------------------

    async def start(
        self,
        principal: Principal,
        event: EventRecord,
        source_name: str,
        prefix: str,
        *,
        watch: bool,
        poll_seconds: float | None,
        keep_duplicates: bool | None,
    ) -> str:
        """A new import of ``prefix`` of the source ``source_name`` into ``event``, started at
        once by this process (any replica takes it over if this one dies)."""
        source = self._sources.get(source_name, principal)
        ensure_accepts_uploads(event)
        params = ImportParams(
            event_id=event.id,
            source=source.name,
            prefix=prefix,
            watch=watch,
            poll_seconds=poll_seconds or self._poll_seconds,
            keep_duplicates=keep_duplicates,
        )
        op_id = new_operation_id()
        progress = {"listed": 0, "imported": 0, "skipped": 0, "failed": 0}
        await self._ops.create(
            op_id,
            IMPORT,
            None,
            params=params.model_dump(),
            progress=progress,
        )
        log.info(
            "import started",
            extra={
                "operation_id": op_id,
                "event_id": event.id,
                "source": source.name,
                "prefix": prefix,
                "watch": watch,
                "token_id": principal.token_id,
            },
        )
        await self.take(op_id)
        return op_id

    # ---- claiming -------------------------------------------------------------------------

    async def claim_pass(self) -> int:
        """Take over open imports nobody holds (new ones another replica could not start, and
        those whose process died); how many were taken."""
        taken = 0
        found = await self._ops.claimable([IMPORT], now_ms(), CLAIMS_PER_PASS, CREATOR_GRACE_MS)
        for op_id in found:
            taken += await self.take(op_id)
        return taken

    async def take(self, op_id: str) -> bool:
        """Carry out the import, if its lease is free and, walking once, a run slot is."""
        if op_id in self._running:
            return False
        lease = self._ops.lease(op_id, self._lease_ms)
        op = await self._ops.claim(lease, now_ms())
        if op is None:
            return False
        if not op.params.get("watch"):
            if len(self._one_time) >= self._max_running:
                await self._ops.release(lease)  # a later pass, or another replica, takes it
                return False
            self._one_time.add(op_id)
        self._wakes[op_id] = asyncio.Event()
        task = asyncio.create_task(self._run(op, lease), name=f"import {op_id}")
        self._running[op_id] = (task, lease)

        def done(_: asyncio.Task[None]) -> None:
            self._running.pop(op_id, None)
            self._one_time.discard(op_id)
            self._wakes.pop(op_id, None)

        task.add_done_callback(done)
        return True

    # ---- notifications --------------------------------------------------------------------

    async def wake(self, objects: Iterable[tuple[str, str]]) -> list[str]:
        """Wake the watching imports whose source bucket and prefix hold one of ``objects``
        (bucket, key) now, rather than at their next poll; the ids of those woken (none: nobody
        watches those keys). The count is stored, so the holder notices it on any replica.

        A source is matched by bucket name and prefix (a notification does not say which
        endpoint it comes from): a wake of an import that has nothing new costs one listing."""
        wanted = list(dict.fromkeys(objects))
        sources = {
            s.name: s
            for s in self._sources.names()
            if any(b == s.config.bucket and k.startswith(s.config.prefix) for b, k in wanted)
        }
        if not sources:
            return []
        woken: list[str] = []
        watching = self._ops_col.find(
            {
                "kind": IMPORT,
                "state": {"$in": OPEN},
                "params.watch": True,
                "params.source": {"$in": sorted(sources)},
            },
            {"_id": 1, "params": 1},
        )
        async for doc in watching:
            try:
                params = ImportParams.model_validate(doc.get("params") or {})
            except ValueError:
                continue
            source = sources.get(params.source)
            if source is None or not params.watch:
                continue
            prefix = source.prefix(params.prefix)
            if any(b == source.config.bucket and k.startswith(prefix) for b, k in wanted):
                woken.append(str(doc["_id"]))
        if not woken:
            return []
        await self._ops_col.update_many(
            {"_id": {"$in": woken}, "state": {"$in": OPEN}}, {"$inc": {WAKE_SEQ: 1}}
        )
        for op_id in woken:
            event = self._wakes.get(op_id)
            if event is not None:
                event.set()
        return woken

    async def close(self) -> None:
        """Stop every import this process carries out; each gives its lease back, so another
        replica resumes it from its cursor at once."""
        running = list(self._running.values())
        for task, _ in running:
            task.cancel()
        await asyncio.gather(*(task for task, _ in running), return_exceptions=True)
        for _, lease in running:
            with contextlib.suppress(Exception):
                await self._ops.release(lease)

    # ---- the walk -------------------------------------------------------------------------

    async def _run(self, op: OperationRecord, lease: Lease) -> None:
        walk = Walk.of(op)
        ids = {"operation_id": op.id, "event_id": op.params.get("event_id")}
        try:
            params = ImportParams.model_validate(op.params)
            async with lease:
                result = await self._walk(op, params, walk, lease)
            if result is not None:
                await self._ops.finish(op.id, result, walk.progress, lease=lease)
                log.info("import done", extra={**ids, **walk.progress})
        except Stop as stop:
            log.info("import stopped: %s", stop.detail, extra={**ids, "code": stop.code})
            await self._ops.fail(
                op.id, f"{stop.code}: {stop.detail}", walk.result(code=stop.code), lease=lease
            )
        except ServiceError as exc:
            await self._ops.fail(op.id, str(exc), walk.result(code=exc.code), lease=lease)
        except (asyncio.CancelledError, LeaseLost):
            raise
        except Exception as exc:
            log.exception("import failed", extra=ids)
            await self._ops.fail(op.id, f"{type(exc).__name__}: {exc}", walk.result(), lease=lease)

    async def _walk(
        self, op: OperationRecord, params: ImportParams, walk: Walk, lease: Lease
    ) -> dict[str, Any] | None:
        """Pass after pass over the prefix; the result to end with (None: it ended otherwise,
        or another holder has it)."""
        try:
            source = self._sources.get(params.source)
        except ServiceError:
            raise Stop(
                "import_source_not_found", f"{params.source!r} is no longer configured"
            ) from None
        prefix = source.prefix(params.prefix)
        outage_wait = 1.0
        outages_here = 0
        outage_at: str | None = None
        while True:
            pass_started = now_ms()
            # Notifications counted so far are for objects already stored: this pass sees them.
            seen = (await self._sleep_state(op.id))[1] if params.watch else 0
            try:
                if await self._pass(op, params, source, prefix, walk, lease):
                    return walk.result(stopped=True)
            except StorageUnavailable as exc:
                # S3 is away (either side): the walk goes on from its cursor once it is back,
                # rather than ending an import (or a watch) that nothing is wrong with. One that
                # fails at the same point again and again (an object S3 cannot serve) ends a
                # one-time import with the reason; a watch keeps trying.
                outages_here = outages_here + 1 if walk.after == outage_at else 1
                outage_at = walk.after
                if not params.watch and outages_here >= self._outage_tries:
                    raise Stop(
                        "storage_unavailable",
                        f"S3 failed {outages_here} times in a row after the key "
                        f"{walk.after or '(start)'!r}: {type(exc).__name__}",
                    ) from None
                log.warning(
                    "import: S3 unavailable, trying again in %.0f s: %s",
                    outage_wait,
                    exc,
                    extra={"operation_id": op.id, "event_id": params.event_id},
                )
                if await self._sleep(op.id, outage_wait):
                    return walk.result(stopped=True)
                outage_wait = min(outage_wait * 2, 60.0)
                continue
            outage_wait = 1.0
            if not params.watch:
                if walk.progress["listed"] == 0:
                    return walk.result(note=NO_OBJECTS)
                return walk.result()
            walk.next_pass(pass_started, covered=seen)
            if not await self._ops.report(op.id, walk.progress, cursor=walk.cursor(), lease=lease):
                raise LeaseLost(op.id)
            if await self._sleep(op.id, params.poll_seconds, woken_after=seen):
                return walk.result(stopped=True)

    async def _pass(
        self,
        op: OperationRecord,
        params: ImportParams,
        source: Source,
        prefix: str,
        walk: Walk,
        lease: Lease,
    ) -> bool:
        """One walk over the prefix from the cursor; True if it was asked to stop.

        Pipelined: the next batch is read and copied while the last one is recorded, so S3 and
        MongoDB work at once (one batch ahead at most; the cursor moves only once a batch is
        recorded, so a kill never skips the batch ahead)."""
        ahead: _Ahead | None = None
        try:
            async for page in source.store.iter_objects(prefix, start_after=walk.after):
                for start in range(0, len(page), self._batch):
                    batch = page[start : start + self._batch]
                    if await self._stop_requested(op.id):
                        return True
                    event = await self._event(params.event_id)
                    task = asyncio.create_task(self._prepare_batch(source, event, batch, walk))
                    previous, ahead = ahead, _Ahead(batch, task)
                    if previous is not None:
                        await self._record_batch(op, params, previous, walk, lease)
            if ahead is not None:
                last, ahead = ahead, None
                await self._record_batch(op, params, last, walk, lease)
            return False
        except (LeaseLost, asyncio.CancelledError):
            # Another holder may be copying to the same keys (they are derived from the
            # objects): what this one prepared is left to it, or to the orphan sweep.
            raise
        except BaseException:
            if ahead is not None:
                await self._drop_ahead(ahead)
            raise

    async def _record_batch(
        self, op: OperationRecord, params: ImportParams, ahead: _Ahead, walk: Walk, lease: Lease
    ) -> None:
        """A prepared batch committed, counted and its cursor stored."""
        results, files = await ahead.task
        # Read again: the batch before counted photos in.
        event = await self._event(params.event_id)
        stop: Stop | None = None
        try:
            results = results + await self._commit(op, params, event, files, lease)
        except _StopWith as stopped:
            results, stop = results + stopped.results, stopped
        for result in results:
            walk.add(result, self._max_items)
            self._metrics.objects.labels(result.outcome).inc()
            self._count_upload(result)
        walk.after = ahead.batch[-1].key
        reported = await self._ops.report(
            op.id,
            walk.progress,
            cursor=walk.cursor(),
            details=walk.take_new_items(),
            lease=lease,
        )
        if not reported:
            raise LeaseLost(op.id)
        if stop is not None:
            raise Stop(stop.code, stop.detail)

    def _count_upload(self, result: Result) -> None:
        """``uploads_total`` of one object: a photo of it, now or already (imported before, or
        a duplicate of a photo there), is accepted; any other skip or failure is refused."""
        if result.outcome == "imported" or result.code in (DUPLICATE, ALREADY_IMPORTED):
            self._uploads.accepted("import")
        else:
            self._uploads.refused("import", result.code or result.outcome)

    async def _drop_ahead(self, ahead: _Ahead) -> None:
        """A batch prepared but never recorded (the walk stopped): its copies are nobody's. A
        kill leaves them to the resumed walk (same keys) or the orphan sweep."""
        ahead.task.cancel()
        with contextlib.suppress(BaseException):
            _, files = await ahead.task
            await self._discard_files(f for _, f in files)

    async def _sleep(self, op_id: str, seconds: float, *, woken_after: int | None = None) -> bool:
        """Wait for the next poll; True if it was asked to stop meanwhile. With
        ``woken_after``: no longer than until a notification takes the Operation's wake count
        past it (see :meth:`wake`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        signal = self._wakes.get(op_id) if woken_after is not None else None
        while (left := deadline - loop.time()) > 0:
            if signal is None:
                await asyncio.sleep(min(STOP_CHECK_SECONDS, left))
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(signal.wait(), min(STOP_CHECK_SECONDS, left))
                signal.clear()
            stop, wakes = await self._sleep_state(op_id)
            if stop:
                return True
            if woken_after is not None and wakes > woken_after:
                log.info("import woken by a bucket notification", extra={"operation_id": op_id})
                return False
        return False

    async def _sleep_state(self, op_id: str) -> tuple[bool, int]:
        """Whether the Operation was asked to stop (or ended), and its wake count."""
        doc = await self._ops_col.find_one(
            {"_id": op_id}, {"state": 1, "stop_requested_ms": 1, WAKE_SEQ: 1}
        )
        if doc is None:
            return True, 0
        stop = doc.get("state") not in OPEN or doc.get("stop_requested_ms") is not None
        wakes = doc.get(WAKE_SEQ)
        return stop, wakes if isinstance(wakes, int) else 0

    async def _stop_requested(self, op_id: str) -> bool:
        op = await self._ops.get(op_id)
        return op is None or op.final or op.stop_requested_ms is not None

    async def _event(self, event_id: str) -> EventRecord:
        event = EventRecord.maybe(await self._photos.events.get(event_id))
        if event is None:
            raise Stop("event_not_found", f"the event {event_id} is gone")
        if not event.accepts_uploads:
            raise Stop(ARCHIVED, "the event was archived: it takes no new photos")
        return event

    async def _prepare_batch(
        self, source: Source, event: EventRecord, batch: list[ListedObject], walk: Walk
    ) -> tuple[list[Result], list[tuple[ListedObject, StoredFile]]]:
        """What is known of a batch before it is recorded (imported before, refused), and the
        files copied for it."""
        refs = {obj.key: import_ref(event.id, source.name, obj) for obj in batch}
        ids = {key: photo_id_of(ref) for key, ref in refs.items()}
        existing = {
            str(doc["_id"]): int(doc.get("created_ms") or 0)
            async for doc in self._photos_col.find(
                {"_id": {"$in": sorted(ids.values())}}, {"_id": 1, "created_ms": 1}
            )
        }
        results: list[Result] = []
        todo: list[ListedObject] = []
        for obj in batch:
            photo_id = ids[obj.key]
            if walk.pass_no > 0 and (
                obj.last_modified_ms < walk.since_ms or photo_id in existing or walk.seen(obj)
            ):
                continue  # a watching import's later pass: seen already
            if photo_id in existing:
                # This Operation made it before a restart (its last batch was not recorded), or
                # an earlier import did.
                if existing[photo_id] >= walk.created_ms:
                    results.append(Result(obj, "imported", photo_id=photo_id))
                else:
                    results.append(
                        _skipped(obj, ALREADY_IMPORTED, "imported before", photo_id=photo_id)
                    )
                continue
            todo.append(obj)
        prepared = await asyncio.gather(
            *(self._prepare(source, event.id, obj, refs[obj.key]) for obj in todo),
            return_exceptions=True,
        )
        files: list[tuple[ListedObject, StoredFile]] = []
        error: BaseException | None = None
        for obj, outcome in zip(todo, prepared, strict=True):
            if isinstance(outcome, Result):
                results.append(outcome)
            elif isinstance(outcome, StoredFile):
                files.append((obj, outcome))
            else:
                error = error or outcome
        if error is not None:
            # Not one object's refusal (those are results): nothing of the batch is kept.
            await self._discard_files(f for _, f in files)
            raise error
        return results, files

    async def _prepare(
        self, source: Source, event_id: str, obj: ListedObject, ref: str
    ) -> StoredFile | Result:
        """The object validated and copied to its photo's key, or why not."""
        if ".." in obj.key.split("/") or obj.key.startswith("/"):
            # S3 takes such keys literally, but a path-minded proxy or server in between may
            # not: never sent on (defence in depth).
            return _skipped(obj, UNSAFE_KEY, "the key has a '..' segment or starts with '/'")
        if obj.size == 0:
            return _skipped(obj, EMPTY, "the object is empty")
        if obj.size > self._rules.max_size:
            return _skipped(obj, TOO_LARGE, f"files are limited to {self._rules.max_size} bytes")
        photo_id = photo_id_of(ref)
        key = records.original_key(event_id, photo_id)
        etag = obj.etag or None
        async with self._copies:
            try:
                if self.before_read is not None:
                    await self.before_read(obj)
                head = await source.store.get_bytes(
                    obj.key, 0, sniff.SNIFF_BYTES - 1, if_match=etag
                )
                kind = sniff.sniff(head)
                if kind is None or not self._rules.accepts(kind):
                    what = "an unrecognised format" if kind is None else kind.name.upper()
                    return _skipped(obj, UNSUPPORTED, f"the content is {what}")
                limit = self._rules.limit(kind.content_type)
                if obj.size > limit:
                    return _skipped(
                        obj, TOO_LARGE, f"{kind.content_type} files are limited to {limit} bytes"
                    )
                sha256 = await self._copy(source, obj, key, kind)
                tail = await self._store.get_bytes(key, max(0, obj.size - sniff.TAIL_BYTES))
                if not sniff.is_complete(kind, head, tail, obj.size):
                    await self._discard(key)
                    return _skipped(obj, TRUNCATED, f"the {kind.name.upper()} data ends early")
            except (PreconditionFailed, _Changed):
                await self._discard(key)
                return _failed(obj, CHANGED, "the object changed while it was imported")
            except ObjectNotFound:
                await self._discard(key)
                return _skipped(obj, GONE, "the object was deleted while it was imported")
            except StorageUnavailable:
                # The whole batch is tried again once S3 is back (_walk): not this object's fault.
                await self._discard(key)
                raise
            except StorageError as exc:
                await self._discard(key)
                log.warning(
                    "import: object not copied: %s",
                    exc,
                    extra={"key": obj.key, "photo_id": photo_id},
                )
                # The server's words may name accounts, ARNs or hosts: logged, not answered.
                return _failed(obj, STORAGE, f"S3 refused it ({type(exc).__name__})")
        name = obj.key.rpartition("/")[2]
        try:
            name = filenames.validate_filename(name)
        except filenames.InvalidFilename:
            name = photo_id
        return StoredFile(
            photo_id,
            key,
            filenames.with_extension(name, kind.extension),
            name,
            kind,
            obj.size,
            sha256,
            import_ref=ref,
        )

    async def _copy(
        self, source: Source, obj: ListedObject, key: str, kind: sniff.FileType
    ) -> str | None:
        """The object at ``key`` of darkroom's bucket; its SHA-256 when its bytes passed here
        (None when copied server-side). :class:`_Changed`: it is not the version listed."""
        etag = obj.etag or None
        if source.server_side:
            copied = await self._store.copy_from(
                source.store.bucket, obj.key, key, obj.size, kind.content_type, if_match=etag
            )
            self._metrics.bytes.labels("copy").inc(obj.size)
            # Servers that ignore x-amz-copy-source-if-match (moto_server does) copy whatever is
            # there: a single-part object's ETag is its MD5 there, so the copy's must be the
            # listed one. Only where said so: elsewhere an encrypted object's ETag is no MD5.
            if self._verify_copy_etag and etag and "-" not in etag and copied and copied != etag:
                raise _Changed(obj.key)
            return None
        # Another endpoint: S3 cannot copy across servers, so the bytes are streamed through in
        # parts (StreamingWriter holds at most two), hashed on the way.
        digest = hashlib.sha256()
        writer = self._store.writer(key, kind.content_type, self._part_bytes)
        try:
            async with source.store.open_stream(obj.key, if_match=etag) as (_, chunks):
                async for chunk in chunks:
                    digest.update(chunk)
                    await writer.write(chunk)
            if writer.size != obj.size:
                raise _Changed(obj.key)
            await writer.close()
        except BaseException:
            await writer.abort()
            raise
        self._metrics.bytes.labels("stream").inc(obj.size)
        return digest.hexdigest()

    async def _discard(self, key: str) -> None:
        """The object a refused copy left at ``key``, unless a photo owns it: another import of
        the same object (its id is this one's) may have recorded it meanwhile."""
        parsed = records.photo_of_key(key)
        if parsed is not None and await self._photos_col.find_one({"_id": parsed[0]}, {"_id": 1}):
            return
        with contextlib.suppress(StorageError):
            await self._store.delete_many([key])

    async def _commit(
        self,
        op: OperationRecord,
        params: ImportParams,
        event: EventRecord,
        files: list[tuple[ListedObject, StoredFile]],
        lease: Lease,
    ) -> list[Result]:
        """The photos of the files copied, counted against the cap and recorded with their
        ``photo.uploaded``."""
        if not files:
            return []
        results: list[Result] = []
        stop: Stop | None = None
        if event.photo_cap is not None:
            room = max(0, event.photo_cap - event.photo_count)
            if len(files) > room:
                files, over = files[:room], files[room:]
                await self._discard_files(f for _, f in over)
                detail = f"the event allows {event.photo_cap} photos"
                results.extend(_failed(obj, CAP, detail) for obj, _ in over)
                stop = Stop(CAP, detail)
        # A holder that lost its lease leaves the objects: its successor copies the same keys.
        if files and not await lease.confirm():
            raise LeaseLost(op.id)
        try:
            results.extend(await self._record(op, params, event, files))
        except ServiceError as exc:
            if exc.code != CAP:
                raise
            # commit_batch deleted the objects of the refused files.
            results.extend(_failed(obj, CAP, exc.detail or exc.kind.title) for obj, _ in files)
            stop = Stop(CAP, exc.detail or exc.kind.title)
        if stop is not None:
            raise _StopWith(stop, results)
        return results

    async def _record(
        self,
        op: OperationRecord,
        params: ImportParams,
        event: EventRecord,
        files: list[tuple[ListedObject, StoredFile]],
    ) -> list[Result]:
        if not files:
            return []
        if params.keep_duplicates is not True:
            files = await self._hash_twins(files)
        try:
            committed = await self._photos.commit_batch(
                event,
                [f for _, f in files],
                params.category_id,
                keep_duplicates=params.keep_duplicates,
            )
        except Conflict:
            # Some were recorded by another holder (one that took over a lease this one lost
            # for a moment): one by one, those recorded already are this import's too.
            if len(files) == 1:
                obj, stored = files[0]
                return [Result(obj, "imported", photo_id=stored.photo_id)]
            out: list[Result] = []
            for one in files:
                out.extend(await self._record(op, params, event, [one]))
            return out
        results: list[Result] = []
        for (obj, stored), done in zip(files, committed, strict=True):
            if done.duplicate:
                results.append(
                    _skipped(
                        obj, DUPLICATE, f"duplicate_of {done.photo.id}", photo_id=done.photo.id
                    )
                )
                continue
            log.info(
                "photo imported",
                extra={
                    "operation_id": op.id,
                    "event_id": event.id,
                    "photo_id": done.photo.id,
                    "key": obj.key,
                },
            )
            results.append(Result(obj, "imported", photo_id=stored.photo_id))
        return results

    async def _hash_twins(
        self, files: list[tuple[ListedObject, StoredFile]]
    ) -> list[tuple[ListedObject, StoredFile]]:
        """Files copied server-side of a size another file of the batch has, with their SHA-256
        (read back): commit_batch compares a file without one only with the photos already in
        the event, so two identical objects in one batch would both be kept. Sizes of distinct
        photos nearly never match, so nearly none is read."""
        sizes = Tally(f.size for _, f in files)
        out = []
        for obj, stored in files:
            if stored.sha256 is None and sizes[stored.size] > 1:
                digest = await object_sha256(self._store, stored.key)
                out.append((obj, dataclasses.replace(stored, sha256=digest)))
            else:
                out.append((obj, stored))
        return out

    async def _discard_files(self, files: Iterable[StoredFile]) -> None:
        """Copies never recorded, but those a photo owns (see :meth:`_discard`)."""
        by_id = {f.photo_id: f.key for f in files}
        if not by_id:
            return
        owned = self._photos_col.find({"_id": {"$in": sorted(by_id)}}, {"_id": 1})
        async for doc in owned:
            by_id.pop(str(doc["_id"]), None)
        if by_id:
            with contextlib.suppress(StorageError):
                await self._store.delete_many(list(by_id.values()))


@dataclass(frozen=True, slots=True)
class _Ahead:
    """A batch being read and copied while the one before it is recorded."""

    batch: list[ListedObject]
    task: asyncio.Task[tuple[list[Result], list[tuple[ListedObject, StoredFile]]]]


class LeaseLost(Exception):
    """Another process holds the import now: this one leaves it alone."""


class _StopWith(Stop):
    """A stop found while committing a batch, with the batch's results to record first."""

    def __init__(self, stop: Stop, results: list[Result]) -> None:
        super().__init__(stop.code, stop.detail)
        self.results = results


class _Changed(Exception):
    """What was copied is not the version listed (a server that ignores the copy condition)."""

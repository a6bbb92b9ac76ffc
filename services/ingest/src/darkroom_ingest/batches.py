"""Batch uploads as one business step: stream the files in, check the batch as a whole, and
count its photos in, exactly once per request key."""

from __future__ import annotations

from aiohttp import MultipartReader
from darkroom_kit.errors import ServiceError
from darkroom_kit.lease import Lease
from darkroom_kit.problems import FieldError
from darkroom_kit.stored.events import EventRecord

from darkroom_ingest.deps import Deps
from darkroom_ingest.errors import IDEMPOTENCY_KEY_IN_USE, NO_VALID_FILES
from darkroom_ingest.gallery import unknown_category
from darkroom_ingest.photos import Committed, ensure_accepts_uploads
from darkroom_ingest.uploads import BatchReceiver, ReceivedBatch, Skipped


async def upload_batch(
    deps: Deps,
    event: EventRecord,
    reader: MultipartReader,
    lease: Lease | None,
    keep_duplicates: bool | None = None,
) -> tuple[list[Committed], list[Skipped]]:
    """The photos stored and the files skipped. ``lease`` holds the request's Idempotency-Key:
    the photos carry it, so a repeat after a crash finds what this request stored."""
    ensure_accepts_uploads(event)
    receiver = BatchReceiver(deps.store, deps.settings, event.id, deps.upload_bytes)
    batch = await receiver.receive(reader)
    # Each file that arrived, counted once (a request broken before its end counts none).
    for skipped in batch.skipped:
        deps.uploads.refused("batch", skipped.code)
    try:
        photos = await _commit(deps, event, receiver, batch, lease, keep_duplicates)
    except ServiceError as error:
        deps.uploads.refused("batch", error.code, len(batch.stored))
        raise
    # Duplicates too: the file was taken (and answered with the photo it repeats).
    deps.uploads.accepted("batch", len(photos))
    return photos, batch.skipped


async def _commit(
    deps: Deps,
    event: EventRecord,
    receiver: BatchReceiver,
    batch: ReceivedBatch,
    lease: Lease | None,
    keep_duplicates: bool | None,
) -> list[Committed]:
    if batch.category_id is not None and batch.category_id not in event.category_ids():
        await receiver.discard(batch.stored)
        raise unknown_category("category_id")
    if not batch.stored:
        raise NO_VALID_FILES.error(
            "See errors for why each file was skipped."
            if batch.skipped
            else "The request has no file parts; send files in the 'photos' field.",
            errors=[
                FieldError(s.field, f"{s.filename}: {s.detail}", s.code) for s in batch.skipped
            ],
            extra={"skipped": [s.as_dict() for s in batch.skipped]},
        )
    if lease is not None and not await lease.confirm():
        # Another request with this key took over while this one's body arrived (this one's
        # renewals failed for longer than the lease): only one of them may store the files.
        await receiver.discard(batch.stored)
        raise IDEMPOTENCY_KEY_IN_USE.error(
            "This request lost its hold on the Idempotency-Key and kept nothing; ask again "
            "with the same key for the answer of the one that took over.",
            retry_after=1,
        )
    return await deps.photos.commit_batch(
        event,
        batch.stored,
        batch.category_id,
        request_key=str(lease.doc_id) if lease is not None else None,
        keep_duplicates=keep_duplicates,
    )

"""Every status a record can be in, spelled once. ``StrEnum`` members are the strings stored in
MongoDB and shown in the API, so a member can be used in a query or compared with a stored value
as it is; the sets of final states live beside their enum so that no service keeps its own."""

from __future__ import annotations

from enum import StrEnum


class PhotoStatus(StrEnum):
    UPLOADED = "uploaded"  # stored; variants pending
    PROCESSED = "processed"
    FAILED = "failed"  # see status_reason
    DELETING = "deleting"  # hidden from every read; its objects and record are being removed


class PhotoKind(StrEnum):
    IMAGE = "image"
    VIDEO = "video"


class EventStatus(StrEnum):
    ACTIVE = "active"
    ARCHIVED = "archived"


class UploadState(StrEnum):
    OPEN = "open"
    COMPLETING = "completing"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"
    EXPIRED = "expired"


UPLOAD_ENDED = frozenset(
    {UploadState.COMPLETED, UploadState.FAILED, UploadState.ABORTED, UploadState.EXPIRED}
)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


DELIVERY_FINAL = frozenset(
    {DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED, DeliveryStatus.CANCELLED}
)


class OperationState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


OPERATION_FINAL = frozenset({OperationState.DONE, OperationState.FAILED})


class IdempotencyState(StrEnum):
    RUNNING = "running"  # its first request holds the key (a lease) and has not answered yet
    DONE = "done"  # the first answer is kept, and replayed to every repeat

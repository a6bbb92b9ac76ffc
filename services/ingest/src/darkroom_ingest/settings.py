from __future__ import annotations

from typing import Literal

from darkroom_kit.settings import CommonSettings, MediaLinkSettings
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

MB = 1000 * 1000
MIB = 1024 * 1024


class ImportSource(BaseModel):
    """A bucket photos may be imported from (``POST /v1/events/{id}/imports``). API callers
    name it; they never see or give its endpoint or credentials."""

    model_config = ConfigDict(extra="forbid")

    # None: darkroom's own S3 endpoint (S3_ENDPOINT_URL).
    endpoint_url: str | None = None
    bucket: str
    # Callers' prefixes are under this one: they never reach outside it. Empty or ending in
    # "/": "incoming" would let a caller's "-private/" reach "incoming-private/".
    prefix: str = ""
    # None: darkroom's own credentials and region.
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    region: str | None = None
    # The events whose event-bound tokens may import from it (an unbound token may always):
    # a drop bucket shared by photographers is not every event's to read.
    event_ids: list[str] = []

    @field_validator("prefix")
    @classmethod
    def _whole_folder(cls, value: str) -> str:
        if value and not value.endswith("/"):
            raise ValueError("a source's prefix is empty or ends with '/'")
        return value


class IngestSettings(CommonSettings, MediaLinkSettings):
    allowed_types: list[str] = ["jpeg", "png", "gif", "webp"]
    max_file_bytes: int = Field(default=50 * MB, ge=1)
    max_batch_files: int = Field(default=500, ge=1)
    # The most one batch request may carry; a larger Content-Length is refused before reading.
    max_batch_bytes: int = Field(default=5 * 1024 * MIB, ge=1)
    max_json_bytes: int = Field(default=1 * MIB, ge=1024)
    # Origins whose pages may call the API from a browser (CORS); "*" for any. None by default.
    cors_allowed_origins: list[str] = []
    # Size of the S3 parts a streamed file is cut into (S3's minimum is 5 MiB).
    upload_part_bytes: int = Field(default=8 * MIB, ge=5 * MIB)
    # Multipart read size: larger means fewer Python-level loop turns per GiB.
    read_chunk_bytes: int = Field(default=256 * 1024, ge=4096)
    # A chunk or tus body that sends nothing for this long is given up (408): a stalled
    # connection must not hold its buffer for ever.
    body_idle_timeout_seconds: float = Field(default=30.0, gt=0)
    # Chunk bodies held in memory at once (each up to UPLOAD_CHUNK_BYTES, as S3 needs a part's
    # length before its first byte); more wait for a turn, and are answered 503 after
    # BODY_IDLE_TIMEOUT_SECONDS without one.
    max_buffered_chunks: int = Field(default=32, ge=1)
    # A writer that has not published its outbox within this time is presumed dead; the relay
    # publishes for it.
    outbox_grace_ms: int = 10_000
    outbox_relay_interval_seconds: float = 2.0
    idempotency_ttl_hours: int = 24
    # Locks held while a request works (an Idempotency-Key's first request, a chunked upload's
    # completion) are leases of this length, renewed every third of it by their process: a dead
    # process's lock is free after at most this long. Long against clock skew between replicas.
    lock_lease_seconds: float = Field(default=10.0, ge=0.3)
    # How long a complete waits for another one in progress before answering 503 with
    # Retry-After: under the 60 s read timeout of common reverse proxies.
    complete_wait_seconds: float = Field(default=30.0, ge=0)
    # Chunked uploads.
    allowed_video_types: list[str] = ["mp4", "mov", "webm", "avi"]
    max_video_bytes: int = Field(default=10 * 1000 * MB, ge=1)
    max_chunked_image_bytes: int = Field(default=200 * MB, ge=1)
    upload_chunk_bytes: int = Field(default=8 * MIB, ge=5 * MIB)
    # Under MinIO's own 24 h purge of unfinished multipart uploads.
    upload_expiry_seconds: float = Field(default=12 * 3600, gt=0)
    upload_sweep_interval_seconds: float = Field(default=60.0, gt=0)
    # Direct uploads (direct/): the largest file sent as one signed PUT (S3 takes up to 5 GiB in
    # one; larger ones go multipart), and how long a signed URL is valid.
    direct_put_max_bytes: int = Field(default=100 * MB, ge=1, le=5 * 1024 * MIB)
    direct_ticket_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    # Photo count (counting.py). A commit's reservation must outlive the slowest commit (the
    # record writes after the bytes are stored: seconds, minutes when MongoDB stalls).
    photo_reservation_ttl_seconds: float = Field(default=120.0, gt=0)
    # A failed commit's places are given back this long after: its insert may still land.
    photo_count_settle_seconds: float = Field(default=10.0, ge=0)
    # Recount events whose reservations expired; the first pass after start recounts all.
    photo_count_interval_seconds: float = Field(default=60.0, ge=0)  # 0: off
    # Orphan sweep (orphans.py). Only age tells a live batch's objects from orphans (they are
    # written before any record), so the grace must outlast the slowest batch request: a full
    # max_batch_bytes (5 GiB) at 2 Mbit/s takes 6 h.
    orphan_grace_seconds: float = Field(default=6 * 3600, ge=0)
    orphan_sweep_interval_seconds: float = Field(default=3600.0, ge=0)  # 0: off
    orphan_max_deletions: int = Field(default=10_000, ge=1)
    # A test send answers with its attempt if webhook-dispatch makes it within this long (the
    # default delivery timeout, and a bit); else 202 with the pending delivery.
    webhook_test_wait_seconds: float = Field(default=20.0, ge=0)
    # A resend answers once webhook-dispatch has reopened the delivery, or after this long.
    webhook_resend_wait_seconds: float = Field(default=5.0, ge=0)
    # S3 prefix imports (imports.py): the sources by name, as JSON in IMPORT_SOURCES, e.g.
    # {"drop": {"bucket": "camera-drop", "prefix": "incoming/", "access_key": "...",
    # "secret_key": "..."}}. A source on darkroom's own endpoint is copied server-side
    # (CopyObject): darkroom's credentials must then be allowed to read its bucket.
    import_sources: dict[str, ImportSource] = {}
    # How often a watching import lists its prefix again, unless the request says.
    import_poll_seconds: float = Field(default=30.0, ge=1)
    # How often each replica looks for imports nobody holds (new ones are started at once by
    # the replica that took the request; this finds those whose process died). 0: never.
    import_claim_interval_seconds: float = Field(default=2.0, ge=0)
    # Imports one replica carries out at once; objects copied at once by one import; objects
    # committed (counted and recorded) per write.
    import_max_running: int = Field(default=4, ge=1)
    import_concurrency: int = Field(default=8, ge=1, le=64)
    import_batch_files: int = Field(default=50, ge=1, le=500)
    # Skipped and failed keys kept with their reasons on an import's Operation.
    import_max_reasons: int = Field(default=1000, ge=0)
    # An S3 server that ignores x-amz-copy-source-if-match (the moto_server stand-in): a
    # single-part copy's ETag (its MD5 there) is compared with the listed one instead. Off for
    # real S3 and MinIO, which honour the condition, and where an encrypted object's ETag is
    # not its MD5 (the comparison would call every object changed).
    s3_ignores_copy_conditions: bool = False
    # S3 outages in a row, at one point of a (not watching) import's walk, after which it ends
    # failed with the reason (a rerun goes on where it stopped: nothing is imported twice).
    import_outage_tries: int = Field(default=10, ge=1)
    # Bucket notifications (import_notifications.py): with this on, upload-ingest consumes the
    # notifications a storage server publishes to RabbitMQ (MinIO's AMQP target; see
    # docker-compose.yml) and a new object under a watching import's prefix wakes that import
    # at once instead of at its next poll (polling stays the fallback). Off by default: nothing
    # publishes them on the embedded stack.
    import_notifications: bool = False
    # The exchange the storage server publishes to (declared here as MinIO declares it: durable,
    # not auto-deleted; the type must be MinIO's MINIO_NOTIFY_AMQP_EXCHANGE_TYPE), and the
    # binding key of upload-ingest's queue on it ("#" on a topic exchange: every routing key).
    import_notify_exchange: str = "darkroom.bucket-events"
    import_notify_exchange_type: Literal["topic", "direct", "fanout"] = "topic"
    import_notify_binding_key: str = "#"
    # The queue's name after the namespace and the service: <namespace>.upload-ingest.<name>.
    import_notify_queue: str = "bucket-notifications"

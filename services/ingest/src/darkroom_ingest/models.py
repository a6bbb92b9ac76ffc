"""Request and response models. They validate requests and generate the OpenAPI document, so the
contract and the code cannot drift apart."""

from __future__ import annotations

import re
from typing import Annotated, Any, Generic, Literal, TypeVar

from darkroom_kit.records import PUBLIC_EVENT_TYPES
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, HttpUrl, field_validator

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class CategoryIn(Strict):
    name: Annotated[str, Field(min_length=1, max_length=100)]


class EventCreate(Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    slug: Annotated[str, Field(min_length=1, max_length=64, description="URL name, a-z 0-9 -")]
    photo_cap: Annotated[int | None, Field(ge=1, le=10_000_000)] = None
    categories: Annotated[list[CategoryIn], Field(max_length=100)] = []

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError("a slug is lower-case letters, digits and inner hyphens")
        return value


class Category(BaseModel):
    id: str
    name: str


class EventOut(BaseModel):
    id: str
    name: str
    slug: str
    photo_cap: int | None
    photo_count: int
    categories: list[Category]
    status: Literal["active", "archived"]
    created_at: str


def _check_event_type(pattern: str) -> str:
    if pattern == "*":
        return pattern
    if pattern.endswith(".*"):
        prefix = pattern[:-1]
        if any(t.startswith(prefix) for t in PUBLIC_EVENT_TYPES):
            return pattern
    elif pattern in PUBLIC_EVENT_TYPES:
        return pattern
    raise ValueError(
        f"unknown event type {pattern!r}; known: {', '.join(PUBLIC_EVENT_TYPES)}, "
        "a prefix wildcard such as photo.*, or * for all"
    )


EventIdFilter = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=64)]] | None,
    Field(
        max_length=100,
        description="Only messages about these darkroom events (endpoint notices always pass)",
    ),
]


RateLimit = Annotated[
    int | None,
    Field(ge=1, le=10_000, description="At most this many attempts per second (all replicas)"),
]
MaxConcurrency = Annotated[
    int | None,
    Field(
        ge=1, le=1_000, description="At most this many attempts in flight at once (all replicas)"
    ),
]


class WebhookCreate(Strict):
    url: HttpUrl
    event_types: Annotated[list[str], Field(min_length=1, max_length=50)]
    description: Annotated[str | None, Field(max_length=500)] = None
    event_ids: EventIdFilter = None
    rate_limit: RateLimit = None
    max_concurrency: MaxConcurrency = None

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(_check_event_type(v.strip()) for v in value))


class WebhookPatch(Strict):
    url: HttpUrl | None = None
    event_types: Annotated[list[str] | None, Field(min_length=1, max_length=50)] = None
    description: Annotated[str | None, Field(max_length=500)] = None
    enabled: bool | None = None
    event_ids: EventIdFilter = None
    rate_limit: RateLimit = None
    max_concurrency: MaxConcurrency = None

    @field_validator("event_types")
    @classmethod
    def _types(cls, value: list[str] | None) -> list[str] | None:
        return (
            None
            if value is None
            else list(dict.fromkeys(_check_event_type(v.strip()) for v in value))
        )


class RotateSecret(Strict):
    grace_period_hours: Annotated[float, Field(ge=0, le=24 * 14)] = 24


class EndpointNotice(BaseModel):
    """``data.endpoint`` of the endpoint.failing / disabled / recovered notices (webhook-dispatch
    writes them)."""

    id: str
    url: str
    description: str | None
    enabled: bool
    failing_since: str | None
    disabled_reason: str | None


class EventTypeOut(BaseModel):
    type: str
    description: str
    schema_: dict[str, Any] = Field(alias="schema")


class WebhookOut(BaseModel):
    id: str
    url: str
    event_types: list[str]
    description: str | None
    enabled: bool
    event_ids: list[str] | None = None
    rate_limit: int | None = None
    max_concurrency: int | None = None
    failing_since: str | None = Field(
        default=None, description="Set while deliveries fail; cleared by the next success"
    )
    disabled_reason: str | None = Field(default=None, description="gone_410, failing or manual")
    created_at: str
    secret: str | None = Field(
        default=None,
        description="The signing secret; returned only at creation and by rotate-secret.",
    )
    secret_rotation_ends_at: str | None = Field(
        default=None, description="Until then deliveries also carry the previous signature."
    )


class Attempt(BaseModel):
    attempt: int
    at: str
    status_code: int | None
    error: str | None
    duration_ms: int
    response_headers: dict[str, str] = {}
    response_body: str | None = None
    response_truncated: bool = False


DeliveryStatus = Literal["pending", "succeeded", "failed", "cancelled"]


class DeliveryQuery(Strict):
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    offset: Annotated[int, Field(ge=0)] = 0
    status: DeliveryStatus | None = None
    event_type: Annotated[str | None, Field(max_length=64)] = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None


class DeliveryOut(BaseModel):
    id: str
    endpoint_id: str
    message_id: str
    event_type: str
    status: DeliveryStatus
    attempt_count: int
    attempts: list[Attempt]
    created_at: str
    last_attempt_at: str | None


class VariantOut(BaseModel):
    width: int | None
    height: int | None
    size: int | None


class Feedback(BaseModel):
    likes: int
    average_rating: float | None
    comment_count: int


class PhotoOut(BaseModel):
    id: str
    event_id: str
    filename: str
    original_filename: str
    content_type: str
    kind: Literal["image", "video"]
    size: int
    sha256: str | None
    width: int | None
    height: int | None
    captured_at: str | None
    duration_ms: int | None = Field(default=None, description="videos: their length")
    uploaded_at: str
    category_id: str | None
    status: Literal["uploaded", "processed", "failed", "deleting"]
    status_reason: str | None
    title: str | None
    description: str | None
    rating: int | None
    keywords: list[str]
    is_hidden: bool
    feedback: Feedback
    download_count: int
    url: str
    thumbnail_url: str
    hero_url: str
    variants: dict[str, VariantOut]


class Skipped(BaseModel):
    filename: str | None
    field: str
    code: str
    detail: str


class BatchOut(BaseModel):
    uploaded: list[PhotoOut]
    skipped: list[Skipped]


class MeOut(BaseModel):
    id: str
    name: str
    scopes: list[str]
    effective_scopes: list[str]
    event_id: str | None
    created_at: str


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class PageQuery(Strict):
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    offset: Annotated[int, Field(ge=0)] = 0


PhotoSort = Literal[
    "upload_date_asc",
    "upload_date_desc",
    "capture_date_asc",
    "capture_date_desc",
    "filename_asc",
    "filename_desc",
    "size_asc",
    "size_desc",
    "rating_asc",
    "rating_desc",
]


class EventListQuery(PageQuery):
    slug: str | None = None


class PhotoListQuery(PageQuery):
    category_id: str | None = None
    is_hidden: bool | None = None
    sort: PhotoSort = "upload_date_desc"


class PhotoPatch(Strict):
    is_hidden: bool | None = None
    title: Annotated[str | None, Field(max_length=300)] = None
    description: Annotated[str | None, Field(max_length=5000)] = None
    rating: Annotated[int | None, Field(ge=1, le=5)] = None
    keywords: Annotated[
        str | list[Annotated[str, Field(max_length=100)]] | None,
        Field(description="An array, or one string with commas"),
    ] = None
    category_id: str | None = None

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        items = value.split(",") if isinstance(value, str) else value
        out = list(dict.fromkeys(k.strip() for k in items if k.strip()))
        if len(out) > 100:
            raise ValueError("at most 100 keywords")
        return out


class BulkDelete(Strict):
    photo_ids: Annotated[list[str], Field(min_length=1, max_length=1000)]


class BulkFailure(BaseModel):
    id: str
    code: str


class BulkDeleteOut(BaseModel):
    deleted: list[str]
    failed: list[BulkFailure]


class EventPatch(Strict):
    name: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    photo_cap: Annotated[int | None, Field(ge=1, le=10_000_000)] = None


class UploadCreate(Strict):
    filename: Annotated[str, Field(min_length=1, max_length=255)]
    size: Annotated[int, Field(ge=1)]
    mime_type: str
    sha256: Annotated[
        str | None, Field(pattern="^[0-9a-f]{64}$", description="hex SHA-256 of the whole file")
    ] = None


class ChunkOut(BaseModel):
    index: int
    size: int
    crc32c: str | None
    sha256: str | None


class UploadOut(BaseModel):
    upload_id: str
    event_id: str
    filename: str
    size: int
    mime_type: str
    chunk_size: int
    chunk_count: int
    state: Literal["open", "completing", "completed", "failed", "aborted", "expired"]
    expires_at: str
    received_bytes: int
    chunks: list[ChunkOut]
    missing: list[int]
    photo_id: str | None
    error: dict[str, Any] | None
    status_url: str


class RepairRequest(Strict):
    event_id: str | None = None
    include_capture_date: bool = False


class WaitQuery(Strict):
    wait: Annotated[float, Field(ge=0, le=60, description="hold the answer up to N seconds")] = 0


class RecoverRequest(Strict):
    since: AwareDatetime = Field(description="Deliveries created at or after this time")
    until: AwareDatetime | None = Field(default=None, description="... and before this (now)")


class OperationFailure(BaseModel):
    id: str
    reason: str


class OperationOut(BaseModel):
    id: str
    kind: str
    state: Literal["queued", "running", "done", "failed"]
    created_at: str
    updated_at: str | None
    progress: dict[str, int]
    result: dict[str, Any] | None


class ProblemOut(BaseModel):
    type: str
    title: str
    status: int
    code: str
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None

"""``/v1/events/{event_id}/uploads`` and ``/v1/uploads`` (chunked, resumable uploads)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from darkroom_kit.statuses import UploadState
from pydantic import BaseModel, Field

from darkroom_ingest.schemas.common import KeepDuplicates, Strict


class UploadCreate(Strict):
    """The file a chunked upload will carry."""

    model_config = Strict.model_config | {
        "json_schema_extra": {
            "examples": [{"filename": "ceremony.mp4", "size": 734003200, "mime_type": "video/mp4"}]
        }
    }

    filename: Annotated[str, Field(min_length=1, max_length=255, description="The file's name.")]
    size: Annotated[int, Field(ge=1, description="The whole file's size in bytes.")]
    mime_type: str = Field(description="Its media type (checked against its bytes).")
    sha256: Annotated[
        str | None,
        Field(
            pattern="^[0-9a-f]{64}$",
            description="Hex SHA-256 of the whole file: checked when the upload completes.",
        ),
    ] = None
    keep_duplicates: KeepDuplicates = None


class ChunkOut(BaseModel):
    """A chunk that arrived."""

    index: int = Field(description="Its index, from 0.")
    size: int = Field(description="Its size in bytes.")
    crc32c: str | None = Field(description="Its CRC32C (base64), when computed.")
    sha256: str | None = Field(description="Its SHA-256 (base64), when sent in Content-Digest.")


class UploadOut(BaseModel):
    """A chunked upload's state, and exactly which chunks arrived."""

    upload_id: str = Field(description="The upload's id.")
    protocol: Literal["chunked", "tus", "direct"] = Field(
        description="How its bytes arrive: chunks by index, tus PATCHes at an offset, or "
        "straight to S3 with signed URLs (direct)."
    )
    event_id: str = Field(description="The event it uploads to.")
    filename: str = Field(description="The file's name.")
    size: int = Field(description="The whole file's size in bytes.")
    mime_type: str = Field(description="Its media type.")
    chunk_size: int = Field(description="Every chunk but the last has exactly this size.")
    chunk_count: int = Field(description="How many chunks the file is cut into.")
    state: UploadState = Field(
        description="open (send chunks), completing, completed, failed, aborted or expired."
    )
    expires_at: str = Field(description="When an unfinished upload is dropped (ISO 8601, UTC).")
    received_bytes: int = Field(
        description="Bytes that arrived (for tus, the offset: where the next PATCH begins)."
    )
    chunks: list[ChunkOut] = Field(description="The chunks that arrived.")
    missing: list[int] = Field(description="The indexes still to send.")
    photo_id: str | None = Field(description="The photo it made, once completed.")
    duplicate_of: str | None = Field(
        default=None,
        description="Set once completed when its bytes equal a photo's already in the event: "
        "that photo (also its photo_id); nothing was stored for this upload.",
    )
    error: dict[str, Any] | None = Field(description="Why it failed (a problem), if it did.")
    status_url: str = Field(description="Where to read this state again.")

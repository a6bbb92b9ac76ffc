"""An upload as the API shows it."""

from __future__ import annotations

from typing import Any

from darkroom_kit.clock import ms_to_iso
from darkroom_kit.mongo import Document
from darkroom_kit.stored.uploads import StoredChunk, UploadRecord


def upload_out(doc: Document | UploadRecord, base_url: str) -> dict[str, Any]:
    upload = doc if isinstance(doc, UploadRecord) else UploadRecord.of(doc)
    return {
        "upload_id": upload.id,
        "protocol": upload.protocol,
        "event_id": upload.event_id,
        "filename": upload.filename,
        "size": upload.size,
        "mime_type": upload.mime_type,
        "chunk_size": upload.chunk_size,
        "chunk_count": upload.chunk_count,
        "state": upload.state.value,
        "expires_at": ms_to_iso(upload.expires_ms) or "",
        "received_bytes": upload.offset if upload.protocol == "tus" else upload.received_bytes,
        "chunks": [{"index": i, **chunk_out(chunk)} for i, chunk in upload.received()],
        "missing": upload.missing(),
        "photo_id": upload.duplicate_of or upload.photo_id,
        "duplicate_of": upload.duplicate_of,
        "error": upload.error.model_dump() if upload.error is not None else None,
        "status_url": f"{base_url}/v1/uploads/{upload.id}",
    }


def chunk_out(chunk: StoredChunk) -> dict[str, Any]:
    return {"size": chunk.size, "crc32c": chunk.crc32c, "sha256": chunk.sha256}

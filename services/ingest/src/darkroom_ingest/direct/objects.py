"""A direct upload's bytes in S3: the requests a client may make (signed URLs), and, once it says
it is done, what S3 really holds. Nothing the client says about its bytes is taken: the parts are
listed by S3, the object's size is read from S3, its type from its first bytes and its
completeness from its last ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

from darkroom_kit.problems import FieldError
from darkroom_kit.storage import ObjectNotFound, PresignedRequest, S3ObjectStore, StoredPart
from darkroom_kit.stored.uploads import UploadRecord

from darkroom_ingest import errors, sniff

if TYPE_CHECKING:
    # Only types: chunked.service imports this module.
    from darkroom_ingest.chunked.machine import Rules
    from darkroom_ingest.chunked.parts import MultipartParts

# The parts a client says it sent: (part number, ETag without quotes).
ClaimedParts = frozenset[tuple[int, str]]


def claimed_parts(parts: list[tuple[int, str]]) -> ClaimedParts:
    return frozenset((number, etag.strip().strip('"')) for number, etag in parts)


class DirectObjects:
    def __init__(self, store: S3ObjectStore, parts: MultipartParts) -> None:
        self._store = store
        self._parts = parts

    # ---- what a client may send ------------------------------------------------------------

    def put_ticket(self, upload: UploadRecord, expires_seconds: int) -> PresignedRequest:
        """One PUT of exactly the declared size and type, to the upload's key."""
        return self._store.presigned_put(upload.key, upload.mime_type, upload.size, expires_seconds)

    def part_ticket(
        self, upload: UploadRecord, number: int, expires_seconds: int, crc32c: str | None
    ) -> PresignedRequest:
        return self._store.presigned_part(
            upload.key, upload.s3_upload_id, number, expires_seconds, checksum_crc32c=crc32c
        )

    async def parts(self, upload: UploadRecord) -> list[StoredPart]:
        """The parts S3 holds; none once the multipart upload is gone."""
        try:
            return await self._store.list_parts(upload.key, upload.s3_upload_id)
        except ObjectNotFound:
            return []

    # ---- completion ------------------------------------------------------------------------

    async def assemble(
        self, upload: UploadRecord, rules: Rules, claimed: ClaimedParts | None
    ) -> sniff.FileType:
        """The object whole at the upload's key, judged by what S3 holds; its real type.

        ServiceError: the file is refused (its bytes are for the caller to drop). ObjectNotFound:
        S3 holds nothing of it yet (the upload may be completed again)."""
        if upload.s3_upload_id:
            await self._complete_multipart(upload, claimed)
        info = await self._store.head(upload.key)
        self._check_size(upload, info.size)
        head = await self._store.get_bytes(upload.key, 0, sniff.SNIFF_BYTES - 1)
        kind = rules.content(head, info.size)
        await self._parts.check_end(upload.key, kind, head, info.size)
        return kind

    async def _complete_multipart(self, upload: UploadRecord, claimed: ClaimedParts | None) -> None:
        try:
            parts = await self._store.list_parts(upload.key, upload.s3_upload_id)
        except ObjectNotFound:
            # Completed by an earlier attempt that died before recording it (the object is
            # there: the HEAD that follows reads it), or aborted (it is not: nothing to complete).
            return
        if claimed is not None and {(p.number, p.etag) for p in parts} != claimed:
            held = ", ".join(str(p.number) for p in parts) or "none"
            raise errors.PARTS_MISMATCH.error(
                f"S3 holds parts {held}, with other ETags or numbers than those sent; nothing "
                "was kept.",
                errors=[FieldError("/parts", "not the parts S3 holds", "parts_mismatch")],
            )
        if not parts:
            raise ObjectNotFound("NoParts")
        self._check_size(upload, sum(p.size for p in parts))
        await self._store.complete_multipart(upload.key, upload.s3_upload_id, parts)

    @staticmethod
    def _check_size(upload: UploadRecord, size: int) -> None:
        if size != upload.size:
            raise errors.SIZE_MISMATCH.error(
                f"S3 holds {size} bytes, not the {upload.size} declared; nothing was kept.",
                extra={"declared_size": upload.size, "size": size},
            )

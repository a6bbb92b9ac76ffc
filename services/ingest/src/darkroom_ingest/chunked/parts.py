"""The upload's bytes in S3: one multipart upload, chunk i its part i+1, so a chunk is kept as it
arrives and the file is assembled by S3 without passing through this service again."""

from __future__ import annotations

from darkroom_kit.storage import ObjectNotFound, PartBody, S3ObjectStore, StoredPart
from darkroom_kit.stored.uploads import UploadRecord

from darkroom_ingest import errors, sniff
from darkroom_ingest.uploads import object_sha256


class MultipartParts:
    def __init__(self, store: S3ObjectStore) -> None:
        self._store = store

    async def begin(self, key: str, content_type: str) -> str:
        """A new multipart upload for ``key``; its S3 id."""
        return await self._store.create_multipart(key, content_type)

    async def put(self, upload: UploadRecord, index: int, body: PartBody) -> StoredPart:
        return await self._store.upload_part(upload.key, upload.s3_upload_id, index + 1, body)

    async def assemble(self, upload: UploadRecord) -> None:
        """The object from the parts recorded; done already by an earlier attempt that died
        before recording it, if S3 no longer knows the multipart upload and the object has the
        upload's size."""
        parts = [StoredPart(i + 1, p.etag, p.size) for i, p in upload.received()]
        try:
            await self._store.complete_multipart(upload.key, upload.s3_upload_id, parts)
        except ObjectNotFound:
            info = await self._store.head(upload.key)
            if info.size != upload.size:
                raise

    async def abort(self, upload: UploadRecord) -> None:
        await self._store.abort_multipart(upload.key, upload.s3_upload_id)

    async def sha256_hex(self, key: str) -> str:
        return await object_sha256(self._store, key)

    async def check_end(self, key: str, kind: sniff.FileType, head: bytes, size: int) -> None:
        """The object's end, read back (a ranged read), as batch uploads check it: a file cut
        short is refused, not stored."""
        tail = await self._store.get_bytes(key, max(0, size - sniff.TAIL_BYTES))
        if not sniff.is_complete(kind, head, tail, size):
            raise errors.TRUNCATED_FILE.error(
                f"The {kind.name.upper()} data ends early: the file is incomplete; nothing was "
                "kept."
            )

    async def discard(self, key: str) -> None:
        await self._store.delete_many([key])

    async def discard_many(self, keys: list[str]) -> None:
        await self._store.delete_many(keys)

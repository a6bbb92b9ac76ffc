"""A chunk's checksums: the ones its client sent, and the ones its bytes have."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import google_crc32c


@dataclass(frozen=True, slots=True)
class Digests:
    crc32c: str | None = None  # base64 of the big-endian CRC32C
    sha256: str | None = None  # base64 of the SHA-256


def parse_digest_headers(content_digest: str | None, crc32c_header: str | None) -> Digests:
    """``Content-Digest: sha-256=:<b64>:, crc32c=:<b64>:`` (RFC 9530 style) and/or
    ``X-Checksum-CRC32C: <b64>``."""
    crc, sha = crc32c_header, None
    for item in (content_digest or "").split(","):
        alg, sep, value = item.strip().partition("=")
        if not sep:
            continue
        value = value.strip().strip(":")
        match alg.strip().lower():
            case "sha-256":
                sha = value
            case "crc32c":
                crc = value
    return Digests(crc.strip() if crc else None, sha)


class ChunkHasher:
    """The CRC32C of every chunk (kept, so a client can check what the server holds) and its
    SHA-256 only when the client sent one to compare with (it costs several times the CRC)."""

    def __init__(self, *, sha256: bool) -> None:
        self._crc = 0
        self._sha = hashlib.sha256() if sha256 else None

    def update(self, piece: bytes) -> None:
        self._crc = google_crc32c.extend(self._crc, piece)
        if self._sha is not None:
            self._sha.update(piece)

    def digests(self) -> Digests:
        return Digests(
            base64.b64encode(self._crc.to_bytes(4, "big")).decode(),
            base64.b64encode(self._sha.digest()).decode() if self._sha is not None else None,
        )

"""tus 1.0.0 as it appears on the wire: the headers a request carries and an answer sends, read
and written here, with no IO and no state (https://tus.io/protocols/resumable-upload).

What darkroom speaks: the core protocol and the extensions creation, creation-with-upload,
creation-defer-length, termination, expiration, checksum and concatenation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Protocol

import google_crc32c
from darkroom_kit.errors import ServiceError
from darkroom_kit.problems import FieldError

from darkroom_ingest import errors

VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "expiration",
    "checksum",
    "concatenation",
)
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
# Every response header a browser page on another origin must be allowed to read.
EXPOSED_HEADERS = (
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Expires",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
)


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc32c:
    """CRC32C in hashlib's shape (big-endian, as S3 and tus clients encode it)."""

    def __init__(self) -> None:
        self._crc = 0

    def update(self, data: bytes, /) -> None:
        self._crc = google_crc32c.extend(self._crc, data)

    def digest(self) -> bytes:
        return self._crc.to_bytes(4, "big")


CHECKSUMS: Mapping[str, Callable[[], Hasher]] = {
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
    "crc32c": _Crc32c,
    "sha256": hashlib.sha256,
}


@dataclass(frozen=True, slots=True)
class Checksum:
    """``Upload-Checksum: <algorithm> <base64 digest>``: the digest of one request's body."""

    algorithm: str
    digest: bytes

    def hasher(self) -> Hasher:
        return CHECKSUMS[self.algorithm]()


def field(header: str, detail: str, code: str) -> FieldError:
    return FieldError(header, detail, code)


def invalid(header: str, detail: str) -> ServiceError:
    """A tus header that cannot be read: 400 naming the header."""
    return errors.TUS_INVALID_HEADER.error(
        detail, errors=[FieldError(header, detail, "invalid_header")]
    )


def check_version(value: str | None) -> None:
    """Every request but OPTIONS names the protocol version it speaks."""
    if value != VERSION:
        raise errors.TUS_VERSION_UNSUPPORTED.error(
            f"Send Tus-Resumable: {VERSION}.",
            errors=[FieldError("Tus-Resumable", f"must be {VERSION}", "unsupported")],
        )


def non_negative(header: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise invalid(header, f"{header} is a whole number of bytes.")
    return int(value)


def parse_metadata(value: str | None) -> dict[str, str]:
    """``Upload-Metadata: key base64,key2 base64,flag``: keys are ASCII without spaces or
    commas, values base64 (a key alone stands for an empty value)."""
    if not value or not value.strip():
        return {}
    pairs: dict[str, str] = {}
    for item in value.split(","):
        parts = item.strip().split(" ")
        key = parts[0]
        if not key or len(parts) > 2 or not key.isascii():
            raise invalid("Upload-Metadata", "Pairs are `key base64value`, comma-separated.")
        if key in pairs:
            raise invalid("Upload-Metadata", f"The key {key!r} comes twice.")
        try:
            decoded = base64.b64decode(parts[1], validate=True) if len(parts) == 2 else b""
            pairs[key] = decoded.decode()
        except (binascii.Error, UnicodeDecodeError):
            raise invalid(
                "Upload-Metadata", f"The value of {key!r} is not base64 of UTF-8 text."
            ) from None
    return pairs


def format_metadata(pairs: Mapping[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


def parse_checksum(value: str | None) -> Checksum | None:
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    if algorithm not in CHECKSUMS:
        raise errors.TUS_CHECKSUM_UNSUPPORTED.error(
            f"Supported: {', '.join(CHECKSUMS)}.",
            errors=[FieldError("Upload-Checksum", "unsupported algorithm", "unsupported")],
        )
    try:
        return Checksum(algorithm, base64.b64decode(encoded.strip(), validate=True))
    except binascii.Error:
        raise invalid("Upload-Checksum", "The digest is base64.") from None


@dataclass(frozen=True, slots=True)
class Concat:
    """``Upload-Concat``: ``partial``, or ``final;<url> <url> ...`` naming the partial uploads
    in order."""

    partial: bool
    upload_ids: tuple[str, ...] = ()


def parse_concat(value: str | None, base_path: str) -> Concat | None:
    if value is None:
        return None
    value = value.strip()
    if value == "partial":
        return Concat(partial=True)
    kind, _, urls = value.partition(";")
    if kind != "final" or not urls.strip():
        raise invalid("Upload-Concat", "`partial` or `final;<url> <url> ...`.")
    ids: list[str] = []
    for url in urls.split():
        # Absolute or relative: the id is what follows the tus base path.
        _, found, upload_id = url.partition(base_path)
        if not found or not upload_id or "/" in upload_id:
            raise invalid("Upload-Concat", f"{url!r} is not an upload of this server.")
        ids.append(upload_id)
    return Concat(partial=False, upload_ids=tuple(ids))


def format_expires(ms: int) -> str:
    """RFC 9110 HTTP-date, as ``Upload-Expires`` is written."""
    return format_datetime(datetime.fromtimestamp(ms / 1000, UTC), usegmt=True)

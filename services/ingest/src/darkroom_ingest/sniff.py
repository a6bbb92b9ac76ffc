"""What a file is, judged by its bytes (never by its name), and whether it arrived whole."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FileType:
    name: str  # "jpeg", "png", ...: the names of the allowed-types setting
    content_type: str
    extension: str


JPEG = FileType("jpeg", "image/jpeg", "jpg")
PNG = FileType("png", "image/png", "png")
GIF = FileType("gif", "image/gif", "gif")
WEBP = FileType("webp", "image/webp", "webp")
MP4 = FileType("mp4", "video/mp4", "mp4")
MOV = FileType("mov", "video/quicktime", "mov")
WEBM = FileType("webm", "video/webm", "webm")
AVI = FileType("avi", "video/x-msvideo", "avi")

ALL_TYPES = (JPEG, PNG, GIF, WEBP, MP4, MOV, WEBM, AVI)
BY_CONTENT_TYPE = {t.content_type: t for t in ALL_TYPES}

# Bytes of a file's head that decide its type.
SNIFF_BYTES = 32
# Bytes of a file's tail kept for the completeness check. Some cameras append trailers after the
# JPEG end-of-image marker (MPF, vendor data), hence more than a few bytes.
TAIL_BYTES = 64 * 1024


def sniff(head: bytes) -> FileType | None:
    if head[:3] == b"\xff\xd8\xff":
        return JPEG
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return PNG
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return AVI
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return WEBM
    if head[4:8] == b"ftyp":
        return MOV if head[8:10] == b"qt" else MP4
    return None


def is_complete(kind: FileType, head: bytes, tail: bytes, size: int) -> bool:
    """A cheap structural check that the file was not cut short.

    A truncated upload is the commonest broken file on bad networks, and each format says where it
    ends: JPEG with the EOI marker, PNG with its IEND chunk, GIF with the 0x3B trailer, RIFF formats
    with a length in their header. The full decode in thumbnailing (``fail_on='error'``) is the
    second line of defence.
    """
    if kind is JPEG:
        end = tail.rfind(b"\xff\xd9")
        # Only padding may follow the EOI, unless an appended trailer carries its own markers.
        return end >= 0 and (not tail[end + 2 :].strip(b"\x00\r\n ") or b"\xff" in tail[end + 2 :])
    if kind is PNG:
        return tail.endswith(b"IEND\xaeB`\x82")
    if kind is GIF:
        return tail.rstrip(b"\x00").endswith(b";")
    if kind in (WEBP, AVI):
        declared = int.from_bytes(head[4:8], "little") + 8
        return size >= declared
    # Containers (MP4, MOV, WebM) are checked when the poster frame is extracted.
    return True

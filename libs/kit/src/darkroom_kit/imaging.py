"""Image facts read from a file's header, shared by thumbnailing and metadata-repair.

Pure functions over bytes: they run inside worker processes, never on the event loop.
"""

from __future__ import annotations

import calendar
import ctypes
import ctypes.util
import os
import re
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Only these libvips loaders may touch user files: every other loader is attack surface.
ALLOWED_LOADERS = {"jpegload_buffer", "pngload_buffer", "webpload_buffer", "gifload_buffer"}

_M_ARENA_MAX = -8  # from glibc's malloc.h

_EXIF_DATE = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


class ImageRefused(Exception):
    """The file can never be rendered: the reason is a stable code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    def __reduce__(self) -> tuple[type[ImageRefused], tuple[str, str]]:
        # Raised in a worker process and unpickled in the service: keep both arguments.
        return (type(self), (self.code, self.detail))


@dataclass(frozen=True, slots=True)
class HeaderFacts:
    width: int  # after EXIF orientation
    height: int
    captured_at_ms: int | None
    loader: str
    pages: int


def init_worker_process(memory_limit_bytes: int | None = None) -> None:
    """Worker-process initializer: one libvips thread per process (one process per core does the
    parallelism), no operation cache (it would pin decoded images between jobs), two malloc arenas
    (glibc's default of 8 per core lets a long-lived worker's RSS creep up) and, when given, a
    bound on the process's address space, so a file that slips past the pixel cap fails with an
    allocation error instead of taking the machine's memory."""
    os.environ.setdefault("VIPS_CONCURRENCY", "1")
    # The environment variable is read when the process starts, too late here: set it directly.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if hasattr(libc, "mallopt"):
        libc.mallopt(_M_ARENA_MAX, 2)
    if memory_limit_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    import pyvips  # noqa: PLC0415 - libvips reads VIPS_CONCURRENCY when it loads

    pyvips.cache_set_max(0)


def parse_exif_date(raw: str | None) -> int | None:
    """``2024:05:06 07:08:09 (...)`` -> epoch ms, taken as UTC (EXIF has no zone here)."""
    if not raw:
        return None
    m = _EXIF_DATE.match(raw.strip())
    if not m:
        return None
    y, mo, d, h, mi, s = (int(g) for g in m.groups())
    if not (1900 < y < 2200 and 1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and s < 61):
        return None
    return calendar.timegm((y, mo, d, h, mi, min(s, 59), 0, 0, 0)) * 1000


def _field(img: Any, name: str) -> Any:
    return img.get(name) if img.get_typeof(name) else None


def read_header(data: bytes | Path, max_pixels: int) -> tuple[Any, HeaderFacts]:
    """Open an image lazily (header only) and check it before anything is decoded. ``data``:
    the file's bytes, or a path to it (a big original, never held whole in memory)."""
    import pyvips  # noqa: PLC0415 - loaded in worker processes only, after their initializer

    try:
        if isinstance(data, Path):
            img = pyvips.Image.new_from_file(str(data), access="sequential", fail_on="error")
        else:
            img = pyvips.Image.new_from_buffer(data, "", access="sequential", fail_on="error")
    except pyvips.Error as exc:
        raise ImageRefused("corrupt_image", first_line(exc)) from None
    # A file opened from disk names the loader without "_buffer": the same decoder.
    loader = str(_field(img, "vips-loader") or "")
    if loader and not loader.endswith("_buffer"):
        loader += "_buffer"
    if loader not in ALLOWED_LOADERS:
        raise ImageRefused("unsupported_format", f"loader {loader or 'unknown'} is not allowed")
    pages = int(_field(img, "n-pages") or 1)
    if img.width * img.height * pages > max_pixels:
        raise ImageRefused(
            "too_many_pixels",
            f"{img.width}x{img.height}x{pages} is over the cap of {max_pixels} pixels",
        )
    orientation = int(_field(img, "orientation") or 1)
    width, height = (
        (img.height, img.width) if orientation in (5, 6, 7, 8) else (img.width, img.height)
    )
    captured = parse_exif_date(_field(img, "exif-ifd2-DateTimeOriginal")) or parse_exif_date(
        _field(img, "exif-ifd0-DateTime")
    )
    return img, HeaderFacts(width, height, captured, loader, pages)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    detail = [line for line in text[1:] if line.strip()]
    return (detail[0] if detail else text[0] if text else "decode failed")[:300]

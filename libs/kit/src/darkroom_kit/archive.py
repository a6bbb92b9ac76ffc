"""One ZIP archive of stored objects, written to the object store as it is read.

:func:`write_archive` reads the objects in the order given, one GET each, and sends the ZIP's
bytes up as the parts of one multipart upload (:class:`~darkroom_kit.storage.StreamingWriter`):
no whole file and no whole archive is ever held, so memory stays bounded whatever the archive's
size (about two parts, plus a few read-ahead chunks, plus one small record per entry for the
central directory). Entries are STORED (photos and videos are compressed already; deflating
them again costs CPU and gains nothing), with a data descriptor after each entry's bytes, so
nothing has to be known of a file before it is read. ZIP64 records are written where the format
needs them: an entry or an offset past 4 GiB, or more than 65,535 entries.

The ZIP format is Python's own :mod:`zipfile`, writing to an unseekable file (documented since
Python 3.5: the local header without sizes, a data descriptor after the data, the central
directory at the end). It is pushed from here, a chunk at a time, on the event loop: each
``write`` does a CRC-32 of at most one chunk and hands the same bytes object back, so there is no
thread to bridge and no buffer between the ZIP writer and the upload. The PyPI streaming-zip
libraries were weighed and left: ``stream-zip`` holds a whole STORED file in memory unless its
CRC-32 is known before its bytes are; ``zipstream-ng`` streams STORED entries the same way
zipfile does (it is built on zipfile's ``ZipInfo``) but cannot set an entry's modified time
(its issue #27).

Names inside the archive are made safe and unique first (:class:`ArchiveNames`): no absolute
path, no ``..``, no control or bidirectional-override characters, nothing Windows refuses, and
no two entries that a case-insensitive file system would extract to one file
(``IMG_1.jpg``, ``IMG_1 (2).jpg``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import posixpath
import re
import stat
import struct
import time
import unicodedata
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from darkroom_kit.storage import (
    MAX_PARTS,
    MIB,
    MIN_PART_SIZE,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
)

CONTENT_TYPE = "application/zip"
DEFAULT_PART_SIZE = 8 * MIB
# Progress is reported after this many source bytes, or at the end of a file once this many
# seconds have passed since the last report (an Operation's progress is a database write).
PROGRESS_BYTES = 64 * MIB
PROGRESS_SECONDS = 1.0
# Chunks read ahead of the ZIP writer (each at most 256 KiB, as the store streams them): the
# next object's GET starts while the last chunks of the one before are still going up.
READ_AHEAD_CHUNKS = 8

# What a name in the archive may be. 255 bytes is the longest file name of most file systems.
MAX_COMPONENT_BYTES = 255
FALLBACK_NAME = "file"
_SEPARATORS = re.compile(r"[/\\]+")
# Refused in Windows file names (with the control characters, which are dropped anyway).
_WINDOWS_FORBIDDEN = re.compile(r'[<>:"|?*]')
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"COM{i}" for i in range(1, 10)]
    + [f"LPT{i}" for i in range(1, 10)]
)
# Unicode categories dropped from names: controls, formatting (bidirectional overrides, zero
# widths: a name that displays as another), lone surrogates (not encodable), line and paragraph
# separators.
_DROPPED_CATEGORIES = frozenset(["Cc", "Cf", "Cs", "Zl", "Zp"])

# The range of ZIP's MS-DOS time fields, and of the extended timestamp's signed 32-bit seconds.
_DOS_EARLIEST = datetime(1980, 1, 1, tzinfo=UTC)
_DOS_LATEST = datetime(2107, 12, 31, 23, 59, 58, tzinfo=UTC)
_UNIX_TIME_MAX = 2**31 - 1
# The "UT" extra field (Info-ZIP extended timestamp): modification time only.
_EXTENDED_TIMESTAMP = 0x5455
_FILE_MODE = (stat.S_IFREG | 0o644) << 16
# Per entry, more than a local header, a ZIP64 data descriptor and a central directory record
# take beyond twice the name (used to choose a part size that the 10,000 parts can hold).
_ENTRY_OVERHEAD = 256


@dataclass(frozen=True, slots=True)
class ArchiveEntry:
    """One file of an archive: the object to read, the name it gets in the ZIP (made safe and
    unique on the way), its size in bytes and when it was last modified (naive: UTC)."""

    key: str
    name: str
    size: int
    modified: datetime


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    key: str
    size: int
    sha256: str
    files: int
    etag: str


class ArchiveError(Exception):
    """The archive could not be made from these entries: trying again will not help until the
    entries or the objects change. Nothing of the archive is left in the store."""


class ArchiveSourceMissing(ArchiveError):
    def __init__(self, index: int, key: str, name: str) -> None:
        super().__init__(f"entry {index} ({name!r}): object {key!r} does not exist")
        self.index, self.key, self.name = index, key, name


class ArchiveSourceChanged(ArchiveError):
    def __init__(self, index: int, key: str, name: str, expected: int, found: int) -> None:
        super().__init__(
            f"entry {index} ({name!r}): object {key!r} has {found} bytes, the entry says {expected}"
        )
        self.index, self.key, self.name = index, key, name
        self.expected, self.found = expected, found


# A progress report: (files done, source bytes done).
Progress = Callable[[int, int], Awaitable[None]]


class ArchiveStore(Protocol):
    """What :func:`write_archive` needs of the object store (:class:`S3ObjectStore` has it)."""

    def open_stream(
        self, key: str
    ) -> contextlib.AbstractAsyncContextManager[tuple[ObjectInfo, AsyncIterator[bytes]]]: ...

    def writer(self, key: str, content_type: str, part_size: int) -> ArchiveWriter: ...

    def iter_multipart_uploads(self, prefix: str) -> AsyncIterator[Sequence[OpenUpload]]: ...

    async def abort_multipart(self, key: str, upload_id: str) -> None: ...


class ArchiveWriter(Protocol):
    async def write(self, chunk: bytes) -> None: ...

    async def close(self) -> ObjectInfo: ...

    async def abort(self) -> None: ...


class OpenUpload(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def upload_id(self) -> str: ...


# ---- names ----------------------------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, on a character boundary."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode(errors="ignore")


def _fit(stem: str, suffix: str, extension: str) -> str:
    """``stem + suffix + extension`` within :data:`MAX_COMPONENT_BYTES`, the stem cut first."""
    extension = _clip(extension, MAX_COMPONENT_BYTES // 2)
    room = MAX_COMPONENT_BYTES - len((suffix + extension).encode())
    return _clip(stem, room) + suffix + extension


def _safe_component(component: str) -> str:
    """One path component as every common file system takes it, or "" when nothing is left."""
    component = _WINDOWS_FORBIDDEN.sub("_", component.strip())
    # Windows drops trailing dots and spaces (so "a." and "a" are one file); this also turns
    # "." and ".." into "".
    component = component.rstrip(". ")
    if not component:
        return ""
    stem, extension = posixpath.splitext(component)
    if stem.split(".")[0].upper() in _WINDOWS_DEVICES:
        stem = "_" + stem
    return _fit(stem, "", extension)


def _sanitized(raw: str) -> str:
    text = unicodedata.normalize("NFC", raw)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    return "/".join(p for p in (_safe_component(c) for c in _SEPARATORS.split(text)) if p)


def sanitize_name(raw: str, fallback: str = FALLBACK_NAME) -> str:
    """A relative path that extracts inside the target folder everywhere: NFC, without control,
    formatting or separator characters, "/" between components (a backslash is a separator
    too), no empty, "." or ".." component, no characters or device names Windows refuses, each
    component at most 255 bytes (the extension kept). ``fallback`` (made safe the same way)
    where nothing is left."""
    return _sanitized(raw) or _sanitized(fallback) or FALLBACK_NAME


def _numbered(component: str, n: int) -> str:
    stem, extension = posixpath.splitext(component)
    return _fit(stem, f" ({n})", extension)


class ArchiveNames:
    """Gives each entry a safe name (:func:`sanitize_name`) that no entry before it has, compared
    as a case-insensitive file system would (NFC and case folded): the second ``IMG_1.jpg``
    becomes ``IMG_1 (2).jpg``, the third ``IMG_1 (3).jpg``. A file never takes the name of a
    folder another entry is in, nor the other way round; a folder keeps the spelling it was
    first given. The same names in the same order always give the same result."""

    def __init__(self, fallback: str = FALLBACK_NAME) -> None:
        self._fallback = fallback
        self._files: set[str] = set()
        self._folders: dict[str, str] = {}  # folded path -> path as first spelled
        self._next: dict[str, int] = {}  # folded path -> the next number to try

    @staticmethod
    def _fold(path: str) -> str:
        return unicodedata.normalize("NFC", path.casefold())

    def _free(self, parent: str, component: str, *, taken: Callable[[str], bool]) -> str:
        base = self._fold(parent + component)
        if not taken(base):
            return component
        n = self._next.get(base, 2)
        while taken(self._fold(parent + (candidate := _numbered(component, n)))):
            n += 1
        self._next[base] = n + 1
        return candidate

    def add(self, raw: str) -> str:
        *folders, leaf = sanitize_name(raw, self._fallback).split("/")
        parent = ""
        for wanted in folders:
            known = self._folders.get(self._fold(parent + wanted))
            if known is not None:
                parent = known + "/"
                continue
            path = parent + self._free(parent, wanted, taken=self._files.__contains__)
            path = self._folders.setdefault(self._fold(path), path)
            # The entries after it that name the same folder go to the same place.
            self._folders[self._fold(parent + wanted)] = path
            parent = path + "/"
        leaf = self._free(
            parent, leaf, taken=lambda folded: folded in self._files or folded in self._folders
        )
        self._files.add(self._fold(parent + leaf))
        return parent + leaf


def archive_names(names: Iterable[str], fallback: str = FALLBACK_NAME) -> list[str]:
    """The names the entries get in the archive, in order (see :class:`ArchiveNames`)."""
    allocator = ArchiveNames(fallback)
    return [allocator.add(name) for name in names]


# ---- the archive ----------------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _zip_info(name: str, entry: ArchiveEntry) -> zipfile.ZipInfo:
    """The entry's record: STORED, its size known (ZIP64 is chosen from it), modified in UTC to
    the 2 s of the MS-DOS fields, and to the second in an extended timestamp (which Info-ZIP,
    7-Zip and macOS read instead, so the time does not depend on the reader's time zone)."""
    moment = min(max(_utc(entry.modified), _DOS_EARLIEST), _DOS_LATEST)
    info = zipfile.ZipInfo(name, date_time=moment.timetuple()[:6])
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = entry.size
    info.external_attr = _FILE_MODE
    unix = min(max(int(_utc(entry.modified).timestamp()), 0), _UNIX_TIME_MAX)
    info.extra = struct.pack("<HHBl", _EXTENDED_TIMESTAMP, 5, 1, unix)
    return info


class _Spool:
    """The file :mod:`zipfile` writes to: unseekable (no ``tell``, so zipfile writes data
    descriptors), keeping what it is given, uncopied, until :func:`write_archive` sends it on."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        self.pieces.append(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: what was written is already in ``pieces``, for the caller."""

    def close(self) -> None:
        """Nothing to release: the caller sends ``pieces`` on and owns the upload."""


@dataclass(frozen=True, slots=True)
class _Opened:
    """An object's GET answered: its chunks follow, then :class:`_Done`."""

    size: int


class _Done:
    """The marker after an object's last chunk on the read-ahead queue."""


_DONE = _Done()
_Item = bytes | _Opened | _Done | Exception


async def _read_in_order(
    store: ArchiveStore,
    entries: Sequence[ArchiveEntry],
    names: Sequence[str],
    queue: asyncio.Queue[_Item],
) -> None:
    """Each entry's object, opened, then its chunks, then :data:`_DONE`, in order; an error in
    its place in the stream, where the writer will meet it."""
    try:
        for index, entry in enumerate(entries):
            try:
                async with store.open_stream(entry.key) as (found, chunks):
                    await queue.put(_Opened(found.size))
                    async for chunk in chunks:
                        await queue.put(chunk)
            except ObjectNotFound as exc:
                raise ArchiveSourceMissing(index, entry.key, names[index]) from exc
            await queue.put(_DONE)
    except Exception as exc:  # handed to the writer, which raises it
        await queue.put(exc)


async def _next(queue: asyncio.Queue[_Item]) -> _Item:
    item = await queue.get()
    if isinstance(item, Exception):
        raise item
    return item


def _part_size_for(entries: Sequence[ArchiveEntry], names: Sequence[str], part_size: int) -> int:
    """``part_size``, or larger when the archive would not fit in S3's 10,000 parts."""
    estimate = sum(
        e.size + _ENTRY_OVERHEAD + 2 * len(n.encode()) for e, n in zip(entries, names, strict=True)
    )
    needed = -(-estimate // (MAX_PARTS - 1))
    return max(part_size, -(-needed // MIB) * MIB)


async def write_archive(
    store: ArchiveStore,
    entries: Sequence[ArchiveEntry],
    key: str,
    *,
    part_size: int = DEFAULT_PART_SIZE,
    progress: Progress | None = None,
    progress_bytes: int = PROGRESS_BYTES,
    progress_seconds: float = PROGRESS_SECONDS,
    force_zip64: bool = False,
) -> ArchiveResult:
    """Write one ZIP of ``entries`` (read in order) to ``key``; its size and SHA-256.

    The ZIP goes up as a multipart upload in parts of ``part_size`` (at least 5 MiB; larger
    when 10,000 of them would not hold the archive), one part uploading while the next fills;
    an archive smaller than one part is a single PUT. ``progress(files, bytes)``, when given, is
    awaited after every ``progress_bytes`` source bytes and at the end of a file once
    ``progress_seconds`` have passed since the last report, and once at the end with the
    totals. ``force_zip64`` writes every entry with ZIP64 records, needed or not.

    Raises :class:`ArchiveSourceMissing` when an object does not exist,
    :class:`ArchiveSourceChanged` when one's size is not its entry's, and the store's errors as
    they are (:class:`~darkroom_kit.storage.StorageUnavailable` is worth another try). On any
    failure, cancellation included, the multipart upload is aborted, and so is any other open
    upload to ``key``: the key must be this archive's alone.
    """
    if part_size < MIN_PART_SIZE:
        raise ValueError("part_size below the S3 minimum of 5 MiB")
    if any(entry.size < 0 for entry in entries):
        raise ValueError("an entry's size is negative")
    names = archive_names(entry.name for entry in entries)
    writer = store.writer(key, CONTENT_TYPE, _part_size_for(entries, names, part_size))
    queue: asyncio.Queue[_Item] = asyncio.Queue(READ_AHEAD_CHUNKS)
    reader = asyncio.create_task(_read_in_order(store, entries, names, queue))
    spool = _Spool()
    digest = hashlib.sha256()
    written = 0

    async def send() -> None:
        nonlocal written
        pieces, spool.pieces = spool.pieces, []
        for piece in pieces:
            digest.update(piece)
            written += len(piece)
            await writer.write(piece)

    files_done = bytes_done = reported_bytes = 0
    reported_at = time.monotonic()

    async def report(*, file_ended: bool) -> None:
        nonlocal reported_bytes, reported_at
        if progress is None:
            return
        due = bytes_done - reported_bytes >= progress_bytes
        if file_ended and time.monotonic() - reported_at >= progress_seconds:
            due = True
        if due:
            reported_bytes, reported_at = bytes_done, time.monotonic()
            await progress(files_done, bytes_done)

    try:
        archive = zipfile.ZipFile(spool, "w", zipfile.ZIP_STORED, allowZip64=True)
        for index, entry in enumerate(entries):
            opened = await _next(queue)
            assert isinstance(opened, _Opened)
            if opened.size != entry.size:
                raise ArchiveSourceChanged(index, entry.key, names[index], entry.size, opened.size)
            read = 0
            with archive.open(_zip_info(names[index], entry), "w", force_zip64=force_zip64) as out:
                while (chunk := await _next(queue)) is not _DONE:
                    assert isinstance(chunk, bytes)
                    read += len(chunk)
                    if read > entry.size:
                        raise ArchiveSourceChanged(index, entry.key, names[index], entry.size, read)
                    out.write(chunk)
                    await send()
                    bytes_done += len(chunk)
                    await report(file_ended=False)
                if read != entry.size:
                    raise ArchiveSourceChanged(index, entry.key, names[index], entry.size, read)
            await send()  # the data descriptor
            files_done += 1
            await report(file_ended=True)
        archive.close()  # the central directory
        await send()
        stored = await writer.close()
    except BaseException:
        reader.cancel()
        # Shielded: a second cancellation while it runs does not leave parts behind.
        await asyncio.shield(_clean_up(store, writer, key, reader))
        raise
    await reader
    if progress is not None:
        await progress(files_done, bytes_done)
    return ArchiveResult(key, written, digest.hexdigest(), files_done, stored.etag)


async def _clean_up(
    store: ArchiveStore, writer: ArchiveWriter, key: str, reader: asyncio.Task[None]
) -> None:
    """Leave nothing behind: the reader stopped, the writer's upload aborted, and any other
    upload still open on ``key`` (one whose creation was cut short before its id came back).
    A store that fails here fails quietly: the error the caller sees is the one that stopped
    the archive."""
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await reader
    with contextlib.suppress(StorageError):
        await writer.abort()
    with contextlib.suppress(StorageError):
        async for page in store.iter_multipart_uploads(key):
            for upload in page:
                if upload.key == key:
                    await store.abort_multipart(key, upload.upload_id)


__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_PART_SIZE",
    "ArchiveEntry",
    "ArchiveError",
    "ArchiveNames",
    "ArchiveResult",
    "ArchiveSourceChanged",
    "ArchiveSourceMissing",
    "ArchiveStore",
    "archive_names",
    "sanitize_name",
    "write_archive",
]

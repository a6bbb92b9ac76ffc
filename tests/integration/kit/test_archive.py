"""The streaming ZIP writer against a real S3 API server (moto_server, or S3_ENDPOINT_URL): the
archives open with Python's zipfile and hold every source byte for byte, memory stays bounded
by the part size, not the archive's, and a failure leaves no multipart upload behind."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import struct
import subprocess
import time
import tracemalloc
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from darkroom_kit.archive import (
    ArchiveEntry,
    ArchiveSourceChanged,
    ArchiveSourceMissing,
    archive_names,
    write_archive,
)
from darkroom_kit.settings import CommonSettings
from darkroom_kit.storage import MIB, ObjectNotFound, S3ObjectStore, open_object_store

from tests.factories.archive import download, open_uploads, put_large
from tests.factories.media import jpeg_bytes

# The big entry: 1.2 GiB by default, as issue 18 asks; ARCHIVE_TEST_LARGE_MIB sets another size.
LARGE_MIB = int(os.environ.get("ARCHIVE_TEST_LARGE_MIB", "1229"))
PART = 8 * MIB
SHOT = datetime(2026, 6, 20, 14, 30, 10, tzinfo=UTC)


@pytest.fixture
async def store(settings_kwargs: dict[str, Any]) -> AsyncIterator[S3ObjectStore]:
    async with open_object_store(CommonSettings(**settings_kwargs)) as s:
        await s.ensure_bucket()
        yield s


@pytest.fixture
def prefix() -> str:
    """This test's own keys (the bucket is the run's)."""
    return f"archive-{secrets.token_hex(4)}/"


async def put_all(store: S3ObjectStore, files: dict[str, bytes]) -> None:
    limit = asyncio.Semaphore(16)

    async def one(key: str, data: bytes) -> None:
        async with limit:
            await store.put_bytes(key, data, "image/jpeg")

    await asyncio.gather(*(one(k, v) for k, v in files.items()))


def unzip_test(path: Path) -> None:
    """Info-ZIP's own check of every entry, where the machine has it (a second reader)."""
    if shutil.which("unzip"):
        result = subprocess.run(
            ["unzip", "-tq", str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


async def test_300_photos_stored_byte_for_byte_with_their_times(
    store: S3ObjectStore, prefix: str, tmp_path: Path
) -> None:
    files = {f"{prefix}src/{i:03d}.jpg": jpeg_bytes(48 + i % 7, 32) for i in range(300)}
    await put_all(store, files)
    entries = [
        ArchiveEntry(key, f"IMG_{i:04d}.jpg", len(data), SHOT + timedelta(minutes=i))
        for i, (key, data) in enumerate(files.items())
    ]
    reports: list[tuple[int, int]] = []

    async def progress(files_done: int, bytes_done: int) -> None:
        reports.append((files_done, bytes_done))

    result = await write_archive(
        store, entries, f"{prefix}event.zip", progress=progress, progress_seconds=0
    )

    path = tmp_path / "event.zip"
    assert await download(store, f"{prefix}event.zip", path) == result.sha256
    assert path.stat().st_size == result.size
    assert result.files == 300
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert [i.filename for i in infos] == [e.name for e in entries]
        for info, entry in zip(infos, entries, strict=True):
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.file_size == info.compress_size == entry.size
            assert archive.read(info) == files[entry.key]
            moment = entry.modified
            assert info.date_time == (*moment.timetuple()[:5], moment.second // 2 * 2)
            # The extended timestamp ("UT"): the exact second, whatever the reader's time zone.
            assert struct.pack("<HHBl", 0x5455, 5, 1, int(moment.timestamp())) in info.extra
    unzip_test(path)
    total = sum(e.size for e in entries)
    # Every file end was reported (progress_seconds=0), then the totals once more.
    assert reports == [
        *((n, sum(e.size for e in entries[:n])) for n in range(1, 301)),
        (300, total),
    ]
    assert await open_uploads(store, prefix) == []


async def test_duplicate_and_unsafe_names_are_made_unique_and_safe(
    store: S3ObjectStore, prefix: str, tmp_path: Path
) -> None:
    asked = [
        "IMG_1.jpg",
        "IMG_1.jpg",
        "img_1.JPG",
        "IMG_1 (2).jpg",
        "../../etc/passwd",
        "/absolute/IMG_1.jpg",
        "C:\\Users\\me\\IMG_1.jpg",
        "bell\x07and\x00nul.jpg",
        "\u202egpj.exe",
        "",
    ]
    files = {f"{prefix}{i}": os.urandom(100 + i) for i in range(len(asked))}
    await put_all(store, files)
    entries = [
        ArchiveEntry(key, name, len(data), SHOT)
        for (key, data), name in zip(files.items(), asked, strict=True)
    ]
    await write_archive(store, entries, f"{prefix}names.zip")

    path = tmp_path / "names.zip"
    await download(store, f"{prefix}names.zip", path)
    expected = [
        "IMG_1.jpg",
        "IMG_1 (2).jpg",
        "img_1 (3).JPG",
        "IMG_1 (2) (2).jpg",
        "etc/passwd",
        "absolute/IMG_1.jpg",
        "C_/Users/me/IMG_1.jpg",
        "bellandnul.jpg",  # zipfile would cut the name at its NUL: the sanitiser drops it
        "gpj.exe",
        "file",
    ]
    assert archive_names(asked) == expected
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert names == expected
        assert len({n.casefold() for n in names}) == len(names)
        for name, entry in zip(names, entries, strict=True):
            assert archive.read(name) == files[entry.key]
        # Extracted, nothing lands outside the target folder.
        target = tmp_path / "out"
        archive.extractall(target)
    extracted = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert extracted == sorted(expected)


@pytest.mark.timeout(900)
async def test_a_large_entry_goes_up_in_parts_with_bounded_memory(
    store: S3ObjectStore, prefix: str, tmp_path: Path
) -> None:
    """A big video between two photos, with the part size at 8 MiB: the ZIP is a multipart
    object and the writer's peak Python memory is a few parts, not the video's size."""
    started = time.perf_counter()
    size, video_sha = await put_large(store, f"{prefix}video.mp4", LARGE_MIB * MIB + 12345)
    photos = {f"{prefix}a.jpg": jpeg_bytes(80, 60), f"{prefix}b.jpg": jpeg_bytes(60, 80)}
    await put_all(store, photos)
    put_seconds = time.perf_counter() - started
    entries = [
        ArchiveEntry(f"{prefix}a.jpg", "a.jpg", len(photos[f"{prefix}a.jpg"]), SHOT),
        ArchiveEntry(f"{prefix}video.mp4", "clip.mp4", size, SHOT),
        ArchiveEntry(f"{prefix}b.jpg", "b.jpg", len(photos[f"{prefix}b.jpg"]), SHOT),
    ]

    started = time.perf_counter()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = await write_archive(store, entries, f"{prefix}big.zip", part_size=PART)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    write_seconds = time.perf_counter() - started

    # Two parts (one filling, one going up) and the read-ahead; the video alone is 150 times more.
    assert peak < 4 * PART, f"peak {peak / MIB:.1f} MiB while writing {size / MIB:.0f} MiB"
    # A multipart object's ETag counts its parts: of 8 MiB and at most one 256 KiB chunk more.
    assert int(result.etag.rsplit("-", 1)[1]) >= result.size // (PART + 256 * 1024)
    path = tmp_path / "big.zip"
    assert await download(store, f"{prefix}big.zip", path) == result.sha256
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["a.jpg", "clip.mp4", "b.jpg"]
        assert archive.read("a.jpg") == photos[f"{prefix}a.jpg"]
        assert archive.read("b.jpg") == photos[f"{prefix}b.jpg"]
        info = archive.getinfo("clip.mp4")
        assert info.compress_type == zipfile.ZIP_STORED
        assert info.file_size == size
        digest = hashlib.sha256()
        with archive.open(info) as member:  # zipfile checks the CRC-32 at the end
            while chunk := member.read(4 * MIB):
                digest.update(chunk)
        assert digest.hexdigest() == video_sha
    print(  # shown with -s: how long the big case takes on this server
        f"\n{size / MIB:.0f} MiB entry: put {put_seconds:.1f} s, archived {write_seconds:.1f} s "
        f"({size / MIB / write_seconds:.0f} MiB/s), peak {peak / MIB:.1f} MiB"
    )
    await store.delete_many([f"{prefix}video.mp4", f"{prefix}big.zip"])


async def test_forced_zip64_is_read_by_zipfile_and_unzip(
    store: S3ObjectStore, prefix: str, tmp_path: Path
) -> None:
    files = {f"{prefix}{i}.jpg": jpeg_bytes(40, 30) for i in range(3)}
    await put_all(store, files)
    entries = [ArchiveEntry(k, f"{i}.jpg", len(v), SHOT) for i, (k, v) in enumerate(files.items())]
    await write_archive(store, entries, f"{prefix}z64.zip", force_zip64=True)

    path = tmp_path / "z64.zip"
    await download(store, f"{prefix}z64.zip", path)
    raw = path.read_bytes()
    # The first local header: sizes deferred to its ZIP64 extra field (id 1), a data descriptor
    # flagged (bit 3), and that descriptor's sizes 8 bytes each.
    signature, _, flags, method, _, _, _, csize, usize, name_len, extra_len = struct.unpack(
        "<IHHHHHIIIHH", raw[:30]
    )
    assert signature == 0x04034B50
    assert flags & 0x08
    assert method == zipfile.ZIP_STORED
    assert (csize, usize) == (0xFFFFFFFF, 0xFFFFFFFF)
    extra = raw[30 + name_len : 30 + name_len + extra_len]
    assert b"\x01\x00\x10\x00" in extra
    first = files[entries[0].key]
    descriptor = raw[30 + name_len + extra_len + len(first) :][:24]
    assert struct.unpack("<IIQQ", descriptor)[2:] == (len(first), len(first))
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        assert all(i.extract_version >= 45 for i in archive.infolist())
        for entry in entries:
            assert archive.read(entry.name) == files[entry.key]
    unzip_test(path)


async def test_a_missing_source_fails_clearly_and_leaves_no_upload(
    store: S3ObjectStore, prefix: str
) -> None:
    """Entry 5 of 8 is gone when its turn comes: by then parts of the archive are up (15 MiB in
    parts of 5 MiB); the upload is aborted, not left to be billed."""
    files = {f"{prefix}{i}.bin": os.urandom(3 * MIB) for i in range(8)}
    del files[f"{prefix}5.bin"]
    await put_all(store, files)
    entries = [ArchiveEntry(f"{prefix}{i}.bin", f"{i}.bin", 3 * MIB, SHOT) for i in range(8)]
    reports: list[tuple[int, int]] = []

    async def progress(files_done: int, bytes_done: int) -> None:
        reports.append((files_done, bytes_done))

    with pytest.raises(ArchiveSourceMissing) as raised:
        await write_archive(
            store,
            entries,
            f"{prefix}out/broken.zip",
            part_size=5 * MIB,
            progress=progress,
            progress_seconds=0,
        )
    assert raised.value.index == 5
    assert raised.value.key == f"{prefix}5.bin"
    assert f"{prefix}5.bin" in str(raised.value)
    assert reports[-1] == (5, 15 * MIB)  # two parts went up before the failure
    assert await open_uploads(store, prefix) == []
    with pytest.raises(ObjectNotFound):
        await store.head(f"{prefix}out/broken.zip")


async def test_a_source_of_another_size_fails_and_leaves_no_upload(
    store: S3ObjectStore, prefix: str
) -> None:
    await put_all(store, {f"{prefix}a": os.urandom(6 * MIB), f"{prefix}b": b"12345"})
    entries = [
        ArchiveEntry(f"{prefix}a", "a", 6 * MIB, SHOT),
        ArchiveEntry(f"{prefix}b", "b", 4, SHOT),
    ]
    with pytest.raises(ArchiveSourceChanged) as raised:
        await write_archive(store, entries, f"{prefix}out.zip", part_size=5 * MIB)
    assert (raised.value.index, raised.value.expected, raised.value.found) == (1, 4, 5)
    assert await open_uploads(store, prefix) == []


async def test_cancelled_mid_way_leaves_no_upload(store: S3ObjectStore, prefix: str) -> None:
    files = {f"{prefix}{i}": os.urandom(4 * MIB) for i in range(6)}
    await put_all(store, files)
    entries = [ArchiveEntry(k, f"{i}", len(v), SHOT) for i, (k, v) in enumerate(files.items())]
    halfway = asyncio.Event()

    async def progress(files_done: int, bytes_done: int) -> None:
        if files_done >= 3:
            halfway.set()
            await asyncio.sleep(3600)  # cancelled here

    task = asyncio.create_task(
        write_archive(
            store,
            entries,
            f"{prefix}c.zip",
            part_size=5 * MIB,
            progress=progress,
            progress_seconds=0,
        )
    )
    await asyncio.wait_for(halfway.wait(), 60)
    assert await open_uploads(store, prefix) == [f"{prefix}c.zip"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await open_uploads(store, prefix) == []

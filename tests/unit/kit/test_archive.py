"""The archive writer's own logic on an in-memory store: ZIP64 past 65,535 entries (65,536
GETs would take minutes on the S3 stand-in), progress reports, part sizes, sources that are
missing or of another size. tests/integration/kit/test_archive.py runs it against S3."""

from __future__ import annotations

import io
import os
import struct
import zipfile
from datetime import UTC, datetime, timedelta, timezone

import pytest
from darkroom_kit.archive import (
    ArchiveEntry,
    ArchiveSourceChanged,
    ArchiveSourceMissing,
    write_archive,
)
from darkroom_kit.storage import MIB

from tests.factories.archive import MemoryStore

WHEN = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)
EOCD64 = struct.pack("<I", 0x06064B50)  # ZIP64 end of central directory record
LOCATOR64 = struct.pack("<I", 0x07064B50)


async def test_more_than_65535_entries_get_zip64_end_records() -> None:
    store = MemoryStore({"one": b"x"})
    entries = [ArchiveEntry("one", f"{i}.txt", 1, WHEN) for i in range(65_536)]
    result = await write_archive(store, entries, "many.zip")

    data = store.objects["many.zip"]
    assert result.files == 65_536
    assert result.size == len(data)
    assert EOCD64 in data[-200:]
    assert LOCATOR64 in data[-200:]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        assert len(infos) == 65_536
        assert infos[-1].filename == "65535.txt"
        assert archive.read(infos[-1]) == b"x"


async def test_65535_entries_or_fewer_need_no_zip64() -> None:
    store = MemoryStore({"one": b"x"})
    entries = [ArchiveEntry("one", f"{i}.txt", 1, WHEN) for i in range(10)]
    await write_archive(store, entries, "few.zip")
    assert EOCD64 not in store.objects["few.zip"]


async def test_progress_every_n_bytes_mid_file_and_the_totals_at_the_end() -> None:
    store = MemoryStore({f"k{i}": os.urandom(MIB) for i in range(10)})
    entries = [ArchiveEntry(f"k{i}", f"{i}", MIB, WHEN) for i in range(10)]
    reports: list[tuple[int, int]] = []

    async def progress(files: int, done: int) -> None:
        reports.append((files, done))

    await write_archive(
        store, entries, "p.zip", progress=progress, progress_bytes=3 * MIB, progress_seconds=3600
    )
    # 3 MiB is reached after the last chunk of the third file, before that file ends; the same
    # for 6 and 9 MiB; then the totals.
    assert reports == [(2, 3 * MIB), (5, 6 * MIB), (8, 9 * MIB), (10, 10 * MIB)]


async def test_part_size_grows_when_10000_parts_would_not_hold_the_archive() -> None:
    store = MemoryStore({"a": b"abc"})
    await write_archive(store, [ArchiveEntry("a", "a", 3, WHEN)], "s.zip", part_size=5 * MIB)
    assert store.writers[-1].part_size == 5 * MIB

    # 200 GiB of entries (never read: the first is missing) need parts of at least 21 MiB.
    huge = [ArchiveEntry(f"v{i}", f"v{i}", 2 * 1024 * MIB, WHEN) for i in range(100)]
    with pytest.raises(ArchiveSourceMissing):
        await write_archive(store, huge, "h.zip", part_size=5 * MIB)
    assert store.writers[-1].part_size == 21 * MIB
    assert store.writers[-1].aborted


async def test_part_size_below_the_s3_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="5 MiB"):
        await write_archive(MemoryStore(), [], "x.zip", part_size=MIB)


async def test_an_object_longer_than_its_entry_stops_before_more_is_written() -> None:
    store = MemoryStore({"a": os.urandom(MIB)})
    # The stream says 1 MiB while the entry says 100 bytes: refused at the GET's answer.
    with pytest.raises(ArchiveSourceChanged, match="1048576 bytes, the entry says 100"):
        await write_archive(store, [ArchiveEntry("a", "a", 100, WHEN)], "x.zip")
    assert store.writers[-1].aborted
    assert "x.zip" not in store.objects


async def test_missing_source_names_the_entry_and_stops_reading() -> None:
    store = MemoryStore({"a": b"1", "c": b"3"})
    entries = [ArchiveEntry(k, k, 1, WHEN) for k in ("a", "b", "c")]
    with pytest.raises(ArchiveSourceMissing, match=r"entry 1 .*'b'") as raised:
        await write_archive(store, entries, "x.zip")
    assert (raised.value.index, raised.value.key) == (1, "b")
    assert store.opened == ["a"]  # "c" is never read
    assert store.writers[-1].aborted


async def test_times_are_written_in_utc_and_clamped_to_what_zip_can_hold() -> None:
    store = MemoryStore({"a": b"1"})
    paris = timezone(timedelta(hours=2))
    entries = [
        ArchiveEntry("a", "local", 1, datetime(2026, 6, 1, 12, 0, 1, tzinfo=paris)),
        ArchiveEntry("a", "naive", 1, datetime(2026, 6, 1, 12, 0, 0)),
        ArchiveEntry("a", "old", 1, datetime(1970, 1, 1, tzinfo=UTC)),
        ArchiveEntry("a", "far", 1, datetime(2200, 1, 1, tzinfo=UTC)),
    ]
    await write_archive(store, entries, "t.zip")
    with zipfile.ZipFile(io.BytesIO(store.objects["t.zip"])) as archive:
        times = [i.date_time for i in archive.infolist()]
        unix = [struct.unpack("<l", i.extra[-4:])[0] for i in archive.infolist()]
    assert times == [
        (2026, 6, 1, 10, 0, 0),
        (2026, 6, 1, 12, 0, 0),
        (1980, 1, 1, 0, 0, 0),
        (2107, 12, 31, 23, 59, 58),
    ]
    assert unix == [
        int(datetime(2026, 6, 1, 10, 0, 1, tzinfo=UTC).timestamp()),
        int(datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC).timestamp()),
        0,
        2**31 - 1,
    ]


async def test_an_empty_selection_is_an_empty_zip() -> None:
    store = MemoryStore()
    result = await write_archive(store, [], "e.zip")
    assert result.files == 0
    with zipfile.ZipFile(io.BytesIO(store.objects["e.zip"])) as archive:
        assert archive.namelist() == []

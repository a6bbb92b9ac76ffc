from __future__ import annotations

import pytest
from darkroom_ingest import sniff

from tests.factories.media import jpeg_bytes, png_bytes


def test_types_are_judged_by_bytes() -> None:
    assert sniff.sniff(jpeg_bytes(10, 10)) is sniff.JPEG
    assert sniff.sniff(png_bytes(10, 10)) is sniff.PNG
    assert sniff.sniff(b"GIF89a" + b"\0" * 20) is sniff.GIF
    assert sniff.sniff(b"RIFF\x10\0\0\0WEBPVP8 ") is sniff.WEBP
    assert sniff.sniff(b"\0\0\0\x18ftypmp42") is sniff.MP4
    assert sniff.sniff(b"\0\0\0\x14ftypqt  ") is sniff.MOV
    assert sniff.sniff(b"hello, this is text named photo.jpg") is None
    assert sniff.sniff(b"") is None


@pytest.mark.parametrize("make", [lambda: jpeg_bytes(300, 200), lambda: png_bytes(300, 200)])
def test_whole_files_are_complete_and_cut_ones_are_not(make) -> None:  # type: ignore[no-untyped-def]
    data = make()
    kind = sniff.sniff(data)
    assert kind is not None
    tail = data[-sniff.TAIL_BYTES :]
    assert sniff.is_complete(kind, data[:32], tail, len(data))
    cut = data[: len(data) // 2]
    assert not sniff.is_complete(kind, cut[:32], cut[-sniff.TAIL_BYTES :], len(cut))


def test_jpeg_with_padding_after_eoi_is_complete() -> None:
    data = jpeg_bytes(100, 100) + b"\0\0\0\n"
    assert sniff.is_complete(sniff.JPEG, data[:32], data[-sniff.TAIL_BYTES :], len(data))


def test_webp_length_must_match_header() -> None:
    body = b"VP8 " + b"\0" * 100
    data = b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WEBP" + body
    assert sniff.is_complete(sniff.WEBP, data[:32], data, len(data))
    assert not sniff.is_complete(sniff.WEBP, data[:32], data[:50], 50)

from __future__ import annotations

import pytest
from darkroom_ingest.filenames import InvalidFilename, numbered, validate_filename, with_extension


@pytest.mark.parametrize(
    "name",
    [
        "../etc/passwd.jpg",
        "a/b.jpg",
        "..\\x.jpg",
        "a\x00b.jpg",
        "line\nbreak.jpg",
        "bell\x07.png",
        "..",
        ".hidden.jpg",
        "",
        "   ",
        None,
        "x" * 300 + ".jpg",
        "a:b.jpg",
        "\x9b.jpg",
        "invoice\u202egpj.exe",  # right-to-left override: reads as invoiceexe.jpg
        "a\u200bb.jpg",  # zero-width space
        "\ufeffIMG.jpg",  # byte order mark
        "x\u2066y.jpg",  # left-to-right isolate
    ],
)
def test_hostile_names_are_refused(name: str | None) -> None:
    with pytest.raises(InvalidFilename):
        validate_filename(name)


@pytest.mark.parametrize("name", ["IMG_0001.JPG", "Café ü.jpg", "wedding (1).png", "日本.webp"])
def test_ordinary_names_are_kept(name: str) -> None:
    assert validate_filename(name) == name


def test_extension_follows_content() -> None:
    assert with_extension("a.png", "jpg") == "a.jpg"
    assert with_extension("a.JPEG", "jpg") == "a.JPEG"
    assert with_extension("noext", "png") == "noext.png"


def test_numbered() -> None:
    assert numbered("a.jpg", 2) == "a-2.jpg"
    assert numbered("a", 3) == "a-3"

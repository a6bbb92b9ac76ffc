"""Names inside an archive: safe wherever it is extracted, and unique as a case-insensitive file
system compares them."""

from __future__ import annotations

import pytest
from darkroom_kit.archive import ArchiveNames, archive_names, sanitize_name


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("IMG_0001.JPG", "IMG_0001.JPG"),
        ("../../etc/passwd", "etc/passwd"),
        ("/abs/olute.jpg", "abs/olute.jpg"),
        ("a/./b/../c.jpg", "a/b/c.jpg"),
        ("C:\\Users\\me\\x.jpg", "C_/Users/me/x.jpg"),
        ("\\\\server\\share\\x.jpg", "server/share/x.jpg"),
        ("tab\there\nnew\rline\x00nul\x1b[31m.jpg", "tabherenewlinenul[31m.jpg"),
        ("\x7fdel\x85nel.jpg", "delnel.jpg"),
        # Bidirectional overrides and zero widths: a name that would display as another.
        ("invoice\u202egpj.exe", "invoicegpj.exe"),
        ("a\u200bb.jpg", "ab.jpg"),
        ('what?<is>:this|"*.jpg', "what__is__this___.jpg"),
        ("trailing dots... ", "trailing dots"),
        ("CON.jpg", "_CON.jpg"),
        ("lpt1", "_lpt1"),
        ("console.jpg", "console.jpg"),
        ("e\u0301t\u00e9.jpg", "\u00e9t\u00e9.jpg"),  # NFC
        ("", "file"),
        ("..", "file"),
        ("/", "file"),
        (" . / .. / ", "file"),
        ("\ud800lone surrogate.jpg", "lone surrogate.jpg"),
    ],
)
def test_sanitize(raw: str, safe: str) -> None:
    assert sanitize_name(raw) == safe


def test_sanitize_keeps_a_fallback_of_its_own() -> None:
    assert sanitize_name("../", fallback="pho_123.jpg") == "pho_123.jpg"
    assert sanitize_name("../", fallback="../") == "file"


def test_long_components_are_cut_to_255_bytes_keeping_the_extension() -> None:
    name = sanitize_name("é" * 300 + ".jpeg")
    assert len(name.encode()) <= 255
    assert name.endswith("é.jpeg")
    deep = sanitize_name("x" * 400 + "/" + "y" * 400)
    assert [len(p) for p in deep.split("/")] == [255, 255]
    numbered = archive_names(["z" * 300 + ".jpg"] * 3)
    assert all(len(n.encode()) <= 255 for n in numbered)
    assert numbered[1].endswith(" (2).jpg")
    assert len(set(numbered)) == 3


def test_duplicates_are_numbered_case_insensitively() -> None:
    assert archive_names(
        ["IMG_1.jpg", "IMG_1.jpg", "img_1.JPG", "IMG_1 (2).jpg", "IMG_1.jpg", "IMG_2.jpg"]
    ) == [
        "IMG_1.jpg",
        "IMG_1 (2).jpg",
        "img_1 (3).JPG",
        "IMG_1 (2) (2).jpg",
        "IMG_1 (4).jpg",
        "IMG_2.jpg",
    ]


def test_names_that_differ_only_in_normalisation_or_folding_collide() -> None:
    assert archive_names(["e\u0301.jpg", "\u00e9.jpg", "\u00c9.JPG", "STRASSE", "straße"]) == [
        "\u00e9.jpg",
        "\u00e9 (2).jpg",
        "\u00c9 (3).JPG",
        "STRASSE",
        "straße (2)",
    ]


def test_names_without_an_extension_and_dotfiles() -> None:
    assert archive_names(["README", "readme", ".hidden", ".HIDDEN", "a.tar.gz", "A.tar.gz"]) == [
        "README",
        "readme (2)",
        ".hidden",
        ".HIDDEN (2)",
        "a.tar.gz",
        "A.tar (2).gz",
    ]


def test_files_and_folders_never_share_a_name() -> None:
    assert archive_names(["a", "a/b.jpg", "A/c.jpg", "x/y.jpg", "X", "x/y.jpg", "X/Y.JPG"]) == [
        "a",
        "a (2)/b.jpg",  # "a" is a file: the folder is renamed ...
        "a (2)/c.jpg",  # ... and the entries after it that name it follow it there
        "x/y.jpg",
        "X (2)",  # "x" is a folder
        "x/y (2).jpg",
        "x/Y (3).JPG",  # a folder keeps its first spelling
    ]


def test_many_duplicates_take_linear_time() -> None:
    names = archive_names(["IMG.jpg"] * 50_000)
    assert names[-1] == "IMG (50000).jpg"
    assert len(set(names)) == 50_000


def test_allocation_is_deterministic_and_incremental() -> None:
    asked = ["b.jpg", "B.jpg", "../b.jpg", "c/d", "C/D"]
    allocator = ArchiveNames()
    assert [allocator.add(n) for n in asked] == archive_names(asked) == archive_names(asked)

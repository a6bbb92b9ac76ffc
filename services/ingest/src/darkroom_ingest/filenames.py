"""File names: which a client may give, and how they become unique within an event."""

from __future__ import annotations

import re
import unicodedata

MAX_FILENAME_LENGTH = 200

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_RESERVED = re.compile(r'[/\\:*?"<>|]')


class InvalidFilename(ValueError):
    """A client-given file name that is refused; the message says why."""


def validate_filename(raw: str | None) -> str:
    """Return the name to store, or raise :class:`InvalidFilename`.

    Names are refused rather than silently rewritten: a client that sends ``../x.jpg`` or a name
    with control characters is broken or hostile, and hearing so beats finding a renamed file.
    """
    if raw is None or not raw.strip():
        raise InvalidFilename("the part has no file name")
    name = unicodedata.normalize("NFC", raw)
    if _CONTROL.search(name):
        raise InvalidFilename("the file name contains control characters")
    # Format characters (category Cf) are invisible: direction overrides make "gpj.exe" read
    # as "exe.jpg", zero-width characters make two names that look the same differ.
    if any(unicodedata.category(c) == "Cf" for c in name):
        raise InvalidFilename(
            "the file name contains invisible characters (direction overrides or zero-width)"
        )
    if "/" in name or "\\" in name or name in {".", ".."}:
        raise InvalidFilename("the file name contains a path; send the bare name")
    if _RESERVED.search(name):
        raise InvalidFilename('the file name contains one of / \\ : * ? " < > |')
    name = name.strip()
    if name.startswith("."):
        raise InvalidFilename("the file name starts with a dot")
    if len(name.encode()) > MAX_FILENAME_LENGTH:
        raise InvalidFilename(f"the file name is longer than {MAX_FILENAME_LENGTH} bytes")
    return name


def with_extension(name: str, extension: str) -> str:
    """Give the stored name the extension of what the file really is (``a.png`` holding JPEG bytes
    is served as ``a.jpg``); a right extension in any case is kept as it is."""
    stem, dot, ext = name.rpartition(".")
    if dot and ext.lower() in _ALIASES.get(extension, {extension}):
        return name
    return f"{stem if dot else name}.{extension}"


_ALIASES = {"jpg": {"jpg", "jpeg", "jpe"}, "mov": {"mov", "qt"}}


def numbered(name: str, n: int) -> str:
    """``a.jpg`` -> ``a-2.jpg``: the n-th file of the same name in one event."""
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-{n}.{ext}" if dot else f"{name}-{n}"

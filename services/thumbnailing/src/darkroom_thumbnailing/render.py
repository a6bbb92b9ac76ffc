"""Rendering variants with libvips. Runs in worker processes (see :func:`init_worker_process`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from darkroom_kit.imaging import HeaderFacts, ImageRefused, first_line, read_header


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    data: bytes
    width: int
    height: int
    content_type: str
    extension: str


@dataclass(frozen=True, slots=True)
class Rendered:
    facts: HeaderFacts
    variants: list[Variant]


@dataclass(frozen=True, slots=True)
class RenderSpec:
    thumbnail_px: int = 400
    hero_px: int = 1600
    quality: int = 82
    format: str = "jpeg"  # or "webp"
    max_pixels: int = 50_000_000
    # libvips fail_on: "error" refuses broken files; "warning" also refuses files libjpeg can
    # only decode with warnings (cut files padded with an end marker, but also many harmless
    # camera quirks such as extraneous bytes before a marker).
    fail_on: str = "error"


def render_variants(data: bytes | Path, spec: RenderSpec) -> Rendered:
    """Hero and thumbnail from ONE decode: the hero is shrunk on load, the thumbnail from the hero.

    EXIF orientation is applied, colour is converted to sRGB before metadata is dropped (so a
    Display-P3 photo keeps its look) and small images are never enlarged.
    """
    import pyvips  # noqa: PLC0415 - loaded in worker processes only, after their initializer

    header, facts = read_header(data, spec.max_pixels)
    colour: dict[str, str] = {}
    if needs_srgb_conversion(header):
        colour["export_profile"] = "srgb"
        if header.interpretation == "cmyk" and not header.get_typeof("icc-profile-data"):
            colour["import_profile"] = "cmyk"
    try:
        shrink: dict[str, Any] = {"height": spec.hero_px, "size": "down", **colour}
        load_options = f"fail_on={spec.fail_on}"
        hero = (
            # From a file, the loader's options ride in the file name.
            pyvips.Image.thumbnail(f"{data}[{load_options}]", spec.hero_px, **shrink)
            if isinstance(data, Path)
            else pyvips.Image.thumbnail_buffer(
                data, spec.hero_px, option_string=load_options, **shrink
            )
        )
        hero = hero.copy_memory()  # decode once; the thumbnail reuses these pixels
        thumb = hero.thumbnail_image(spec.thumbnail_px, height=spec.thumbnail_px, size="down")
        if hero.hasalpha() and spec.format == "jpeg":
            hero = hero.flatten(background=[255, 255, 255])
            thumb = thumb.flatten(background=[255, 255, 255])
        variants = [
            _encode("hero", hero, spec),
            _encode("thumbnail", thumb, spec),
        ]
    except pyvips.Error as exc:
        detail = first_line(exc)
        code = "memory_limit" if "memory" in detail.lower() else "corrupt_image"
        raise ImageRefused(code, detail) from None
    except MemoryError:
        # The worker's address-space bound was reached: this file needs more than we allow.
        raise ImageRefused("memory_limit", "decoding needs more memory than allowed") from None
    return Rendered(facts, variants)


_SRGB_NAMES = (b"sRGB", "sRGB".encode("utf-16-be"))


def needs_srgb_conversion(header: Any) -> bool:
    """Whether pixels must go through a colour transform to be sRGB once the profile is gone.

    A file without a profile is sRGB by convention and one with an sRGB profile already is: for
    those the transform changes nothing and costs more than the decode itself (about 230 ms of
    CPU for a 24 MP photo). Any other profile (Display P3, Adobe RGB, a camera's) and CMYK are
    converted.
    """
    if header.interpretation == "cmyk":
        return True
    if not header.get_typeof("icc-profile-data"):
        return False
    profile = bytes(header.get("icc-profile-data"))
    return not any(name in profile for name in _SRGB_NAMES)


def _encode(name: str, img: object, spec: RenderSpec) -> Variant:
    if spec.format == "webp":
        data = img.webpsave_buffer(Q=spec.quality, keep="none")  # type: ignore[attr-defined]
        ctype, ext = "image/webp", "webp"
    else:
        data = img.jpegsave_buffer(  # type: ignore[attr-defined]
            Q=spec.quality, keep="none", optimize_coding=True, interlace=True
        )
        ctype, ext = "image/jpeg", "jpg"
    return Variant(name, data, img.width, img.height, ctype, ext)  # type: ignore[attr-defined]

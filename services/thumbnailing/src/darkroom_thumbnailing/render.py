"""Rendering variants with libvips. Runs in worker processes (see :func:`init_worker_process`)."""

from __future__ import annotations

from dataclasses import dataclass

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


def render_variants(data: bytes, spec: RenderSpec) -> Rendered:
    """Hero and thumbnail from ONE decode: the hero is shrunk on load, the thumbnail from the hero.

    EXIF orientation is applied, colour is converted to sRGB before metadata is dropped (so a
    Display-P3 photo keeps its look) and small images are never enlarged.
    """
    import pyvips  # noqa: PLC0415 - loaded in worker processes only, after their initializer

    _, facts = read_header(data, spec.max_pixels)
    try:
        hero = pyvips.Image.thumbnail_buffer(
            data,
            spec.hero_px,
            height=spec.hero_px,
            size="down",
            export_profile="srgb",
            option_string=f"fail_on={spec.fail_on}",
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

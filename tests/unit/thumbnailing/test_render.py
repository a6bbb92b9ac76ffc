"""The renderer itself, in-process, against files built for each trap: orientation, colour
profiles, metadata, small and animated images, output format."""

from __future__ import annotations

import io

import pytest
import pyvips
from darkroom_kit.imaging import ImageRefused
from darkroom_thumbnailing.render import RenderSpec, render_variants
from PIL import Image, ImageOps

from tests.factories.media import gps_jpeg

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def marked_jpeg(orientation: int) -> bytes:
    """600x400 stored, blue with a red top-left corner block, and the given EXIF orientation."""
    image = Image.new("RGB", (600, 400), BLUE)
    image.paste(RED, (0, 0, 150, 100))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def corner_colours(image: Image.Image) -> dict[str, tuple[int, ...]]:
    w, h = image.size
    rgb = image.convert("RGB")
    at = {"tl": (2, 2), "tr": (w - 3, 2), "bl": (2, h - 3), "br": (w - 3, h - 3)}
    return {name: tuple(rgb.getpixel(xy)) for name, xy in at.items()}  # type: ignore[arg-type]


def red_corner(image: Image.Image) -> str:
    reds = [name for name, (r, g, b) in corner_colours(image).items() if r > 200 and b < 60]
    assert len(reds) == 1, corner_colours(image)
    return reds[0]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied(orientation: int) -> None:
    data = marked_jpeg(orientation)
    # Pillow's exif_transpose is the independent reference for where the corner must end up.
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    rendered = render_variants(data, RenderSpec(thumbnail_px=120, hero_px=300))
    portrait = orientation >= 5
    assert (rendered.facts.width, rendered.facts.height) == ((400, 600) if portrait else (600, 400))
    for variant, long_edge in zip(rendered.variants, (300, 120), strict=True):
        out = Image.open(io.BytesIO(variant.data))
        assert max(out.size) == long_edge
        assert (out.size[0] < out.size[1]) == portrait
        assert (variant.width, variant.height) == out.size
        assert red_corner(out) == red_corner(expected)
        assert not out.getexif()  # no orientation tag left to be applied twice


def test_a_display_p3_photo_comes_out_srgb() -> None:
    red = (pyvips.Image.black(64, 64) + list(RED)).cast("uchar").copy(interpretation="srgb")
    p3 = red.icc_transform("p3", input_profile="srgb", embedded=False)
    data = p3.jpegsave_buffer(Q=95, keep="icc")
    raw = Image.open(io.BytesIO(data))
    assert raw.info.get("icc_profile")
    # Read without colour management, the P3 numbers are a dull red...
    assert raw.convert("RGB").getpixel((5, 5))[1] > 40  # type: ignore[index]
    rendered = render_variants(data, RenderSpec())
    for variant in rendered.variants:
        out = Image.open(io.BytesIO(variant.data))
        # ...converted to sRGB before the profile was stripped, it is the red that was meant.
        r, g, b = out.convert("RGB").getpixel((5, 5))  # type: ignore[misc]
        assert (r > 245, g < 12, b < 12) == (True, True, True), (r, g, b)
        assert not out.info.get("icc_profile")


def test_gps_and_the_rest_of_the_metadata_are_stripped_from_variants() -> None:
    data = gps_jpeg()
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)  # the source has GPS
    for variant in render_variants(data, RenderSpec()).variants:
        out = Image.open(io.BytesIO(variant.data))
        assert not out.getexif()
        assert b"Exif" not in variant.data[:4096]
        assert not {"exif", "xmp", "icc_profile"} & set(out.info)


def test_a_small_gif_is_not_enlarged_and_an_animated_one_gives_its_first_frame() -> None:
    frames = [Image.new("P", (120, 90), colour) for colour in (1, 2, 3)]
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12)
    for frame in frames:
        frame.putpalette(palette)
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    rendered = render_variants(out.getvalue(), RenderSpec())
    assert (rendered.facts.width, rendered.facts.height, rendered.facts.pages) == (120, 90, 3)
    for variant in rendered.variants:
        image = Image.open(io.BytesIO(variant.data))
        assert image.size == (120, 90)  # never enlarged
        r, g, b = image.convert("RGB").getpixel((60, 45))  # type: ignore[misc]
        # the first frame (red), not a later one
        assert (r > 200, g < 50, b < 50) == (True, True, True), (r, g, b)


def test_webp_output_is_a_setting() -> None:
    rendered = render_variants(marked_jpeg(1), RenderSpec(format="webp"))
    for variant in rendered.variants:
        assert (variant.content_type, variant.extension) == ("image/webp", "webp")
        assert Image.open(io.BytesIO(variant.data)).format == "WEBP"


def test_a_truncated_jpeg_is_refused() -> None:
    data = marked_jpeg(1)
    with pytest.raises(ImageRefused) as refused:
        render_variants(data[: len(data) // 2], RenderSpec())
    assert refused.value.code == "corrupt_image"


def test_only_the_allowed_loaders_are_used() -> None:
    tiff = (pyvips.Image.black(32, 32) + 100).cast("uchar").tiffsave_buffer()
    with pytest.raises(ImageRefused) as refused:
        render_variants(tiff, RenderSpec())
    assert refused.value.code == "unsupported_format"


def test_only_files_that_are_not_srgb_go_through_a_colour_transform() -> None:
    from darkroom_thumbnailing.render import needs_srgb_conversion

    red = (pyvips.Image.black(16, 16) + list(RED)).cast("uchar").copy(interpretation="srgb")
    plain = pyvips.Image.new_from_buffer(red.jpegsave_buffer(keep="none"), "")
    srgb = pyvips.Image.new_from_buffer(
        red.icc_transform("srgb", input_profile="srgb", embedded=False).jpegsave_buffer(keep="icc"),
        "",
    )
    p3 = pyvips.Image.new_from_buffer(
        red.icc_transform("p3", input_profile="srgb", embedded=False).jpegsave_buffer(keep="icc"),
        "",
    )
    cmyk = pyvips.Image.new_from_buffer(
        red.icc_transform("cmyk", input_profile="srgb", embedded=False).jpegsave_buffer(
            keep="none"
        ),
        "",
    )
    assert srgb.get_typeof("icc-profile-data")
    assert [needs_srgb_conversion(i) for i in (plain, srgb, p3, cmyk)] == [
        False,
        False,
        True,
        True,
    ]
    rendered = render_variants(cmyk.jpegsave_buffer(), RenderSpec())
    r, g, b = Image.open(io.BytesIO(rendered.variants[0].data)).convert("RGB").getpixel((5, 5))  # type: ignore[misc]
    assert (r > 200, g < 60, b < 60) == (True, True, True), (r, g, b)

"""Test files: images built with Pillow, byte strings that only look like a type, video clips.

Every call makes a file of its own (random bytes in a comment or a text chunk where the picture
is fixed), as every real photo is: an event refuses a second copy of the same bytes, so a test
that means to send a duplicate sends the same bytes twice on purpose."""

from __future__ import annotations

import io
import os
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo


def jpeg_bytes(
    width: int = 1200,
    height: int = 800,
    *,
    orientation: int | None = None,
    captured: str | None = None,
    quality: int = 88,
    color: tuple[int, int, int] = (200, 40, 40),
) -> bytes:
    image = Image.new("RGB", (width, height), color)
    # A gradient, so the file is not trivially small and decoding does real work.
    for x in range(0, width, max(1, width // 16)):
        image.paste((x % 256, 80, 255 - x % 256), (x, 0, min(width, x + 8), height))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if captured is not None:
        exif[0x8769] = {0x9003: captured}
    out = io.BytesIO()
    image.save(
        out,
        "JPEG",
        quality=quality,
        exif=exif.tobytes() if len(exif) else b"",
        comment=os.urandom(8).hex(),
    )
    return out.getvalue()


def png_bytes(width: int = 640, height: int = 480) -> bytes:
    text = PngInfo()
    text.add_text("Comment", os.urandom(8).hex())
    out = io.BytesIO()
    Image.new("RGBA", (width, height), (20, 120, 220, 200)).save(out, "PNG", pnginfo=text)
    return out.getvalue()


def gps_jpeg() -> bytes:
    """A JPEG whose EXIF holds a camera maker and a GPS position."""
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)}
    out = io.BytesIO()
    Image.new("RGB", (800, 600), (10, 200, 30)).save(
        out, "JPEG", exif=exif.tobytes(), comment=os.urandom(8).hex()
    )
    return out.getvalue()


def jpeg_like(size: int) -> bytes:
    """``size`` bytes that sniff as a JPEG (start and end markers) without being one."""
    return b"\xff\xd8\xff\xe0" + os.urandom(size - 6) + b"\xff\xd9"


def noise_png(width: int, height: int) -> bytes:
    """A PNG of random pixels: about 3 bytes a pixel whatever the compression, for a batch of a
    known size."""
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, "PNG")
    return out.getvalue()


def mp4(size: int) -> bytes:
    """``size`` bytes that sniff as an MP4 (an ``ftyp`` box) without being one."""
    return b"\0\0\0\x18ftypmp42" + os.urandom(size - 12)


def make_clip(path: Any, seconds: float, size: str, rotation: int = 0) -> bytes:
    """A test-pattern clip; ``rotation`` writes the display matrix a phone writes when it films
    upright (the pixels stay landscape)."""
    import subprocess

    from darkroom_kit.video import ffmpeg_path

    subprocess.run(
        [
            ffmpeg_path(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"testsrc=duration={seconds}:size={size}:rate=10",
            "-pix_fmt",
            "yuv420p",
            "-metadata",
            f"comment={os.urandom(8).hex()}",
            "-y",
            str(path),
        ],
        check=True,
        timeout=60,
    )
    if rotation:
        rotated = path.with_name("rotated-" + path.name)
        subprocess.run(
            [
                ffmpeg_path(),
                "-hide_banner",
                "-loglevel",
                "error",
                "-display_rotation",
                str(rotation),
                "-i",
                str(path),
                "-c",
                "copy",
                "-y",
                str(rotated),
            ],
            check=True,
            timeout=60,
        )
        rotated.replace(path)
    return bytes(path.read_bytes())


def named_jpegs(*names: str) -> tuple[tuple[str, bytes], ...]:
    """A small JPEG under each name, as the files of a batch upload."""
    return tuple((name, jpeg_bytes(64, 64)) for name in names)

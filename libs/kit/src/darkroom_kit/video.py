"""Video facts and poster frames with the ffmpeg that imageio-ffmpeg ships (it has no ffprobe).

ffmpeg reads the original over a presigned URL and seeks with ranged GETs: a 10 GB video is never
downloaded to take one frame or to read its header. ``-ss`` before ``-i`` seeks on the input (2 to
3 times faster than decoding up to the mark). A clip shorter than the mark gives an empty output
with exit code 0, so the first frame is taken instead. ffmpeg applies the rotation metadata of
phone videos to the frames it decodes; :func:`probe_video` applies it to the dimensions.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass

from darkroom_kit.clock import iso_to_ms
from darkroom_kit.imaging import ImageRefused

_DURATION = re.compile(rb"Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_VIDEO_SIZE = re.compile(rb"Stream #\S+.*?: Video: .*?, (\d{2,5})x(\d{2,5})[ ,]")
_ROTATION = re.compile(rb"rotation of (-?\d+(?:\.\d+)?) degrees")
_NOT_BEFORE_MS = 347_155_200_000  # 1981-01-01
_CREATED = re.compile(rb"creation_time\s*: (\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z?)")


@dataclass(frozen=True, slots=True)
class Poster:
    png: bytes
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class VideoFacts:
    width: int  # as displayed: rotation applied
    height: int
    duration_ms: int | None
    captured_at_ms: int | None


def ffmpeg_path() -> str:
    import imageio_ffmpeg  # noqa: PLC0415 - only the services that run ffmpeg depend on it

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def parse_duration_ms(stderr: bytes) -> int | None:
    found = _DURATION.search(stderr)
    if not found:
        return None
    hours, minutes, seconds = found.groups()
    return int((int(hours) * 3600 + int(minutes) * 60 + float(seconds)) * 1000)


def parse_video_facts(stderr: bytes) -> VideoFacts | None:
    """What ffmpeg prints about its input: the first video stream's size, its rotation, the
    duration and the container's creation time (taken as the capture date)."""
    size = _VIDEO_SIZE.search(stderr)
    if size is None:
        return None
    width, height = int(size.group(1)), int(size.group(2))
    rotation = _ROTATION.search(stderr, size.end())
    if rotation is not None and round(abs(float(rotation.group(1)))) % 180 == 90:
        width, height = height, width
    captured = None
    created = _CREATED.search(stderr)
    if created is not None:
        stamp = created.group(1).decode()
        captured = iso_to_ms(stamp if stamp.endswith("Z") else stamp + "Z")  # ffmpeg writes UTC
        # Cameras without a clock write the epoch of their format (1904 or 1970): not a date.
        if captured is not None and captured < _NOT_BEFORE_MS:
            captured = None
    return VideoFacts(width, height, parse_duration_ms(stderr), captured)


async def probe_video(url: str, time_limit: float) -> VideoFacts:
    """Read a video's header over ``url`` (ffmpeg fetches only the ranges it needs)."""
    _, stderr = await _run_ffmpeg(["-i", url], time_limit)
    facts = parse_video_facts(stderr)
    if facts is None:
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-2:-1] or ["no video"]
        raise ImageRefused("corrupt_video", tail[0][:300])
    return facts


async def poster_frame(url: str, at_seconds: float, time_limit: float) -> Poster:
    """The frame at ``at_seconds`` (or the first, for a shorter clip) as PNG bytes."""
    for mark in (at_seconds, 0.0) if at_seconds > 0 else (0.0,):
        png, stderr = await _run_ffmpeg(
            [
                "-ss",
                f"{mark:.3f}",
                "-i",
                url,
                "-frames:v",
                "1",
                "-f",
                "image2pipe",
                "-vcodec",
                "png",
                "-",
            ],
            time_limit,
        )
        if png:
            return Poster(png, parse_duration_ms(stderr))
    tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no frame"]
    raise ImageRefused("corrupt_video", tail[0][:300])


async def _run_ffmpeg(args: list[str], time_limit: float) -> tuple[bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        ffmpeg_path(),
        "-hide_banner",
        "-nostdin",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), time_limit)
    except BaseException as exc:  # a timeout, or the handler cancelled at shutdown
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise ImageRefused("render_timeout", f"ffmpeg took over {time_limit:g}s") from None
        raise
    return out, err

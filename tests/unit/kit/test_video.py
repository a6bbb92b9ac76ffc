"""What ffmpeg prints about a video, read into facts (no ffprobe ships with imageio-ffmpeg)."""

from __future__ import annotations

from darkroom_kit.video import parse_video_facts

PHONE = (  # ffmpeg 9's own lines, the long stream line kept whole
    b"""Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'http://s3/x.mp4?X-Amz-Signature=...':
  Metadata:
    major_brand     : qt
    creation_time   : 2024-05-06T07:08:09.000000Z
  Duration: 00:00:12.34, start: 0.000000, bitrate: 9000 kb/s
"""
    b"  Stream #0:0[0x1](und): Video: hevc (Main) (hvc1 / 0x31637668), yuv420p(tv), 1920x1080,"
    b""" 8000 kb/s, 30 fps (default)
    Side data:
      Display Matrix: rotation of -90.00 degrees
  Stream #0:1[0x2](und): Audio: aac (LC), 44100 Hz, stereo
"""
)


def test_a_phone_video_is_portrait_with_its_duration_and_capture_time() -> None:
    facts = parse_video_facts(PHONE)
    assert facts is not None
    assert (facts.width, facts.height) == (1080, 1920)
    assert facts.duration_ms == 12_340
    assert facts.captured_at_ms == 1_714_979_289_000  # 2024-05-06T07:08:09Z


def test_a_camera_without_a_clock_has_no_capture_time_and_no_rotation_keeps_the_size() -> None:
    stderr = PHONE.replace(b"2024-05-06T07:08:09.000000Z", b"1904-01-01T00:00:00.000000Z")
    stderr = stderr.replace(b"Display Matrix: rotation of -90.00 degrees", b"")
    facts = parse_video_facts(stderr)
    assert facts is not None
    assert (facts.width, facts.height, facts.captured_at_ms) == (1920, 1080, None)


def test_no_video_stream_is_no_facts() -> None:
    assert parse_video_facts(b"Stream #0:0: Audio: mp3, 44100 Hz\nDuration: 00:00:01.00") is None

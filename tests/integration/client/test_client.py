"""The upload client, as a library and as a process that gets killed half-way."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from darkroom_client import DarkroomClient
from darkroom_kit import records
from darkroom_kit.mongo import MONGO_DB

from tests.factories.api import CHUNK, Client, TokenMaker, auth, base_url, make_event
from tests.factories.media import jpeg_bytes, mp4, png_bytes
from tests.factories.messaging import eventually


async def test_library_uploads_a_folder_and_a_rerun_skips_it(
    capi: Client, make_token: TokenMaker, tmp_path: Path
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    folder = tmp_path / "shoot"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(jpeg_bytes(300, 200))
    (folder / "sub" / "b.png").write_bytes(png_bytes(100, 100))
    (folder / "clip.mp4").write_bytes(mp4(CHUNK + 5000))
    (folder / "notes.txt").write_text("not a photo: not picked up from a folder")
    seen: list[str] = []
    state = tmp_path / "state.json"
    async with DarkroomClient(
        base_url(capi), token, state_file=state, progress=lambda name, n: seen.append(name)
    ) as client:
        result = await client.upload(event["slug"], [folder, tmp_path / "missing.jpg"])
    assert sorted(Path(p).name for p in result.uploaded) == ["a.jpg", "b.png", "clip.mp4"]
    assert list(result.failed) == [str(tmp_path / "missing.jpg")]
    assert result.uploaded[str(folder / "clip.mp4")]["kind"] == "video"
    assert {Path(n).name for n in seen} >= {"a.jpg", "b.png", "clip.mp4"}
    async with DarkroomClient(base_url(capi), token, state_file=state) as client:
        again = await client.upload(event["id"], [folder])
    assert (len(again.uploaded), len(again.skipped), len(again.failed)) == (0, 3, 0)
    photos = await capi.server.app[MONGO_DB][records.PHOTOS].count_documents(
        {"event_id": event["id"]}
    )
    assert photos == 3


def run_cli(api: Client, token: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "darkroom_client.cli",
            "--url",
            base_url(api),
            "--token",
            token,
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_cli_resumes_after_being_killed(
    capi: Client, make_token: TokenMaker, tmp_path: Path
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    video = tmp_path / "ceremony.mp4"
    data = mp4(8 * CHUNK + 1234)
    video.write_bytes(data)
    state = tmp_path / "state.json"
    args = [str(video), "--event", event["slug"], "--state", str(state), "--parallel", "1"]
    # Slow enough (20 MB/s) to be killed in the middle of the nine chunks.
    first = run_cli(capi, token, *args, "--limit-rate", "20M")
    uploads = capi.server.app[MONGO_DB]["uploads"]

    async def some_chunks_arrived() -> dict[str, Any] | None:
        doc = await uploads.find_one({"event_id": event["id"]})
        return doc if doc and 2 <= len(doc["parts"]) < 9 else None

    before = await eventually(some_chunks_arrived, timeout=30, interval=0.02)
    first.send_signal(signal.SIGKILL)
    await asyncio.to_thread(first.wait)
    killed = await uploads.find_one({"_id": before["_id"]})
    assert killed is not None
    assert killed["state"] == "open"
    arrived = {i: p["at_ms"] for i, p in killed["parts"].items()}
    assert 2 <= len(arrived) < 9
    assert json.loads(state.read_text())  # it kept what it needs to resume

    second = run_cli(capi, token, *args)
    _, err = await asyncio.to_thread(second.communicate, timeout=120)
    assert second.returncode == 0, err
    assert "1 uploaded" in err
    done = await uploads.find_one({"_id": before["_id"]})
    assert done is not None
    assert done["state"] == "completed"
    # Only the missing chunks were sent again: the earlier ones kept their arrival times.
    assert {i: done["parts"][i]["at_ms"] for i in arrived} == arrived
    served = await capi.get(f"/photos/{event['slug']}/ceremony.mp4", headers=auth(token))
    assert await served.read() == data


async def test_cli_names_the_files_that_failed(
    capi: Client, make_token: TokenMaker, tmp_path: Path
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(jpeg_bytes(64, 64))
    bad.write_bytes(b"this is text, not a JPEG")
    proc = run_cli(
        capi,
        token,
        str(good),
        str(bad),
        "--event",
        event["slug"],
        "--state",
        str(tmp_path / "s.json"),
    )
    _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 1
    assert f"FAILED {bad}: unsupported_type" in err
    assert "1 uploaded" in err
    no_token = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "darkroom_client.cli", str(good), "--event", "x"],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "DARKROOM_TOKEN"},
        check=False,
    )
    assert no_token.returncode == 2
    assert "no token" in no_token.stderr

"""The hot folder as a process: files written in pieces go once they are whole, temporary and
system files never, a restart sends nothing twice, and a folder that goes away ends it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from darkroom_kit import records
from darkroom_kit.mongo import MONGO_DB

from tests.factories.api import CHUNK, Client, TokenMaker, auth, base_url, make_event
from tests.factories.media import jpeg_bytes, mp4
from tests.factories.messaging import eventually

SETTLE = "1.0"


def start_watch(
    api: Client, token: str, folder: Path, event: str, state: Path
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "darkroom_client.watch",
            str(folder),
            "--event",
            event,
            "--url",
            base_url(api),
            "--token",
            token,
            "--settle",
            SETTLE,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DARKROOM_STATE": str(state)},
    )


async def write_in_pieces(path: Path, data: bytes, pieces: int, pause: float) -> None:
    """As a tethering tool does: the file grows in steps, with pauses shorter than the settle
    time, and is whole only at the end."""
    step = -(-len(data) // pieces)
    with path.open("wb") as out:
        for start in range(0, len(data), step):
            out.write(data[start : start + step])
            out.flush()
            await asyncio.sleep(pause)


async def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    return proc.returncode, err


async def test_a_hot_folder_sends_each_whole_file_once_across_a_restart(
    capi: Client, make_token: TokenMaker, tmp_path: Path
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    folder = tmp_path / "tether"
    folder.mkdir()
    state = tmp_path / "state.json"
    photos = capi.server.app[MONGO_DB][records.PHOTOS]

    async def count() -> int:
        return await photos.count_documents({"event_id": event["id"]})

    async def settles_at(n: int) -> None:
        """n photos arrive, and no more once there was time to send anything twice."""

        async def arrived() -> bool:
            return await count() >= n

        await eventually(arrived, timeout=60, interval=0.2)
        await asyncio.sleep(3 * float(SETTLE))
        assert await count() == n

    early = jpeg_bytes(300, 200)
    (folder / "early.jpg").write_bytes(early)  # there before the watch starts
    watch = start_watch(capi, token, folder, event["slug"], state)
    try:
        grown, clip = jpeg_bytes(900, 600), mp4(CHUNK + 70_000)
        await asyncio.gather(
            write_in_pieces(folder / "grown.jpg", grown, 4, 0.4),
            write_in_pieces(folder / "clip.mp4", clip, 3, 0.4),
        )
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (folder / "._grown.jpg").write_bytes(b"\0\5\x16\7 AppleDouble")
        (folder / "renamed.jpg.part").write_bytes(jpeg_bytes(100, 100))
        (folder / "renamed.jpg.part").rename(folder / "renamed.jpg")
        (folder / "notes.tmp").write_text("scratch")
        # A folder of photos moved in whole: no event for its files of their own.
        card = tmp_path / "card"
        card.mkdir()
        (card / "moved.jpg").write_bytes(jpeg_bytes(140, 90))
        card.rename(folder / "card")
        await settles_at(5)
        for name, data in (("early.jpg", early), ("grown.jpg", grown), ("clip.mp4", clip)):
            served = await capi.get(f"/photos/{event['slug']}/{name}", headers=auth(token))
            assert served.status == 200, name
            assert await served.read() == data, f"{name} went before it was whole"
    finally:
        code, err = await stop(watch)
    assert code == 0, err
    assert "done 5" in err, err

    # A restart finds everything done; a new file goes, and only it.
    watch = start_watch(capi, token, folder, event["slug"], state)
    try:
        (folder / "later.jpg").write_bytes(jpeg_bytes(120, 120))
        await settles_at(6)
    finally:
        code, err = await stop(watch)
    assert code == 0, err
    assert "already there: " in err  # the five of the first run, found in the state


async def test_a_folder_that_goes_away_ends_the_watch_with_a_reason(
    capi: Client, make_token: TokenMaker, tmp_path: Path
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    folder = tmp_path / "card"
    folder.mkdir()
    watch = start_watch(capi, token, folder, event["slug"], tmp_path / "state.json")
    try:
        await asyncio.sleep(2.0)  # watching by then
        assert watch.poll() is None
        shutil.rmtree(folder)
        _, err = await asyncio.to_thread(watch.communicate, timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 1, err
    assert "is gone" in err, err

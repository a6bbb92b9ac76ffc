"""The upload client, as a library and as a process that gets killed half-way."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from darkroom_client import DarkroomClient
from darkroom_client.cli import ProgressBar
from darkroom_client.client import find_media
from darkroom_kit import records
from darkroom_kit.mongo import MONGO_DB

from tests.factories.api import CHUNK, Client, TokenMaker, auth, base_url, make_event
from tests.factories.media import jpeg_bytes, mp4, noise_png, png_bytes
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


async def test_copies_of_photos_there_are_reported_as_duplicates_and_kept_once(
    capi: Client, make_token: TokenMaker, tmp_path: Path
) -> None:
    """A shoot copied into a second folder (a card read twice): the server keeps one of each, and
    the client says which files were copies, batch and chunked alike, among new files."""
    token = await make_token()
    event = await make_event(capi, token)
    photo, clip = jpeg_bytes(300, 200), mp4(CHUNK + 5000)
    first, second = tmp_path / "card", tmp_path / "card-again"
    for folder in (first, second):
        folder.mkdir()
        (folder / "a.jpg").write_bytes(photo)
        (folder / "clip.mp4").write_bytes(clip)
    (second / "new.jpg").write_bytes(jpeg_bytes(300, 200))
    async with DarkroomClient(base_url(capi), token, state_file=tmp_path / "s.json") as client:
        one = await client.upload(event["id"], [first])
        two = await client.upload(event["id"], [second])
    assert sorted(Path(p).name for p in one.uploaded) == ["a.jpg", "clip.mp4"]
    assert sorted(Path(p).name for p in two.uploaded) == ["new.jpg"]
    assert two.duplicates == {
        str(second / "a.jpg"): one.uploaded[str(first / "a.jpg")]["id"],
        str(second / "clip.mp4"): one.uploaded[str(first / "clip.mp4")]["id"],
    }
    assert not two.failed
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


class FlakyProxy:
    """A real HTTP proxy in front of the API that loses answers and asks for patience: the
    network a photographer's client meets. Each request is recorded with its Idempotency-Key."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen: list[tuple[str, str, str | None]] = []
        # (method, path ending) -> how many of the next such requests are forwarded and then
        # answered 502, as when a connection drops after the server did the work.
        self.lose_answer: dict[tuple[str, str], int] = {}
        self.busy = 0  # the next this many requests get 503 with Retry-After: 1
        # The next this many writes get the 409 of a first try the server is still running.
        self.still_running = 0
        self.in_flight: set[str] = set()  # the paths of the requests being answered
        self.most_at_once: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("Idempotency-Key")
        self.seen.append((request.method, request.path, key))
        if self.still_running > 0 and request.method != "GET":
            self.still_running -= 1
            return web.json_response(
                {"code": "idempotency_key_in_use", "detail": "the first try still runs"},
                status=409,
                headers={"Retry-After": "1"},
            )
        if self.busy > 0:
            self.busy -= 1
            return web.json_response(
                {"code": "overloaded", "detail": "busy"}, status=503, headers={"Retry-After": "1"}
            )
        self.in_flight.add(request.path)
        try:
            return await self._forward(request)
        finally:
            self.in_flight.discard(request.path)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if len(self.in_flight) > len(self.most_at_once):
            self.most_at_once = set(self.in_flight)
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length", "transfer-encoding", "connection")
        }
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                request.method, self.target + request.path_qs, data=body, headers=headers
            ) as resp,
        ):
            answer = await resp.read()
            status, ctype = resp.status, resp.headers.get("Content-Type", "")
        for (method, ending), left in self.lose_answer.items():
            if left and request.method == method and request.path.endswith(ending):
                self.lose_answer[(method, ending)] = left - 1
                return web.Response(status=502, text="upstream answer lost")
        return web.Response(status=status, body=answer, headers={"Content-Type": ctype})

    async def __aenter__(self) -> FlakyProxy:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def test_lost_answers_are_retried_with_the_same_key_and_nothing_doubles(
    capi: Client, make_token: TokenMaker, tmp_path: Path
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(120, 80))
    (tmp_path / "b.png").write_bytes(png_bytes(60, 60))
    (tmp_path / "clip.mp4").write_bytes(mp4(CHUNK + 777))
    retries: list[str] = []
    wire = WireLog()
    async with FlakyProxy(base_url(capi)) as proxy:
        # The batch, the chunked upload's creation, a chunk and its completion: each done by
        # the server, each answer lost on the way back.
        proxy.lose_answer = {
            ("POST", "/photos"): 1,
            ("POST", "/uploads"): 1,
            ("PUT", "/chunks/0"): 1,
            ("POST", "/complete"): 1,
        }
        async with DarkroomClient(
            proxy.url,
            token,
            state_file=tmp_path / "state.json",
            progress=wire.progress,
            on_retry=lambda what, wait, attempt, tries: retries.append(what),
        ) as client:
            result = await client.upload(event["id"], [tmp_path])
    # What a lost try sent is taken back from progress: each file counts once.
    sizes = {p.name: p.stat().st_size for p in find_media([tmp_path])}
    assert wire.net() == sizes
    assert any(n < 0 for _, _, n in wire.sent)
    assert result.ok, result.failed
    assert sorted(Path(p).name for p in result.uploaded) == ["a.jpg", "b.png", "clip.mp4"]
    assert not any(proxy.lose_answer.values())
    assert len(retries) == 4
    assert all("HTTP 502" in r for r in retries)
    writes = [(m, p, k) for m, p, k in proxy.seen if m != "GET"]
    assert all(k for _, _, k in writes), "every write carries an Idempotency-Key"
    for ending in ("/photos", "/uploads", "/chunks/0", "/complete"):
        keys = [k for _, p, k in writes if p.endswith(ending)]
        assert len(keys) == 2, (ending, keys)
        assert keys[0] == keys[1], (ending, keys)
    db = capi.server.app[MONGO_DB]
    assert await db[records.PHOTOS].count_documents({"event_id": event["id"]}) == 3
    assert await db["uploads"].count_documents({"event_id": event["id"]}) == 1


async def test_retry_after_is_honoured_and_said(
    capi: Client, make_token: TokenMaker, tmp_path: Path
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(64, 64))
    said: list[tuple[str, float, int, int]] = []
    async with FlakyProxy(base_url(capi)) as proxy:
        proxy.busy = 2
        proxy.still_running = 1
        async with DarkroomClient(
            proxy.url,
            token,
            state_file=tmp_path / "state.json",
            retries=3,
            on_retry=lambda *told: said.append(told),
        ) as client:
            result = await client.upload(event["id"], [tmp_path / "a.jpg"])
    assert result.ok, result.failed
    # Two 503s for the event lookup, then the batch's 409 of a first try still running: asked
    # again with the same key, as the server says, not given up on.
    waits = [(wait, attempt, tries) for _, wait, attempt, tries in said]
    assert waits == [(1.0, 2, 4), (1.0, 3, 4), (1.0, 2, 4)]
    assert [what.split(": ", 1)[1] for what, *_ in said] == [
        "503 overloaded: busy",
        "503 overloaded: busy",
        "409 idempotency_key_in_use: the first try still runs",
    ]


async def test_a_server_that_stays_away_is_given_up_on_with_a_reason(tmp_path: Path) -> None:
    from darkroom_client.client import UploadError

    from darkroom_dev.servers import free_port

    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(64, 64))
    said: list[str] = []
    async with DarkroomClient(
        f"http://127.0.0.1:{free_port()}",
        "drk_nothing",
        state_file=tmp_path / "state.json",
        retries=2,
        on_retry=lambda what, *_: said.append(what),
    ) as client:
        with pytest.raises(
            UploadError, match=r"gave up after 3 tries in \d+ s: ClientConnectorError"
        ):
            await client.upload("ev_1", [tmp_path / "a.jpg"])
    assert len(said) == 2


def test_the_cli_says_when_and_why_it_retries(tmp_path: Path) -> None:
    from darkroom_dev.servers import free_port

    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(64, 64))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "darkroom_client.cli",
            str(tmp_path / "a.jpg"),
            "--event",
            "ev_1",
            "--url",
            f"http://127.0.0.1:{free_port()}",
            "--token",
            "drk_nothing",
            "--retries",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "DARKROOM_STATE": str(tmp_path / "state.json")},
    )
    assert proc.returncode == 1
    assert "GET /v1/events/ev_1: ClientConnectorError" in proc.stderr
    assert "try 2 of 3 in" in proc.stderr
    assert "gave up after 3 tries" in proc.stderr


class WireLog:
    """The progress a client reports, with when: bytes on the wire and bytes already there."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, str, int]] = []
        self.there: dict[str, int] = {}

    def progress(self, name: str, n: int) -> None:
        self.sent.append((time.monotonic(), name, n))

    def already_there(self, name: str, n: int) -> None:
        self.there[name] = self.there.get(name, 0) + n

    def net(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, name, n in self.sent:
            out[Path(name).name] = out.get(Path(name).name, 0) + n
        return out

    def rate(self) -> float:
        """Bytes a second from the first block to the last."""
        first, last = self.sent[0][0], self.sent[-1][0]
        return sum(n for _, _, n in self.sent[1:]) / (last - first)


async def test_limit_rate_holds_on_the_wire_for_a_batch_and_a_chunked_file(
    capi: Client, make_token: TokenMaker, tmp_path: Path
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    batch = tmp_path / "batch"
    batch.mkdir()
    for i in range(3):
        (batch / f"p{i}.png").write_bytes(noise_png(600, 600))  # about 1.08 MB each
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(mp4(CHUNK + 300_000))
    limit = 2_000_000.0
    for files in ([batch], [clip]):
        wire = WireLog()
        async with DarkroomClient(
            base_url(capi),
            token,
            state_file=tmp_path / "state.json",
            rate_limit=limit,
            parallel=4,
            progress=wire.progress,
        ) as client:
            result = await client.upload(event["id"], files)
        assert result.ok, result.failed
        sizes = {
            p.name: p.stat().st_size for f in files for p in ([f] if f.is_file() else f.iterdir())
        }
        assert wire.net() == sizes
        # Progress moves with the blocks, not once a file or a chunk is in.
        assert len(wire.sent) > 3 * len(sizes)
        print(f"{files[0].name}: {wire.rate() / limit:.3f} of the limit")
        assert 0.85 * limit <= wire.rate() <= 1.15 * limit, (files, wire.rate())


def test_the_bar_counts_only_bytes_sent_in_its_rate() -> None:
    out = io.StringIO()
    clock = [0.0] + [10.0] * 6
    with mock.patch("darkroom_client.cli.time.monotonic", side_effect=clock):
        bar = ProgressBar({"a.jpg": 10_000_000, "b.jpg": 1_000}, stream=out)
        bar.already_there("a.jpg", 10_000_000)
        bar("b.jpg", 1_000)
    line = out.getvalue().splitlines()[-1]
    assert "sent a.jpg" in out.getvalue()
    # 1 KB sent in 10 s: 100 B/s, not the 10 MB that were there already.
    assert "10.0 MB/10.0 MB 100 B/s" in line, line


async def test_several_files_go_at_once_within_the_parallel_bound(
    capi: Client, make_token: TokenMaker, tmp_path: Path
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    for i in range(4):
        (tmp_path / f"clip{i}.mp4").write_bytes(mp4(CHUNK + 1000 * i + 1))
    async with (
        FlakyProxy(base_url(capi)) as proxy,
        DarkroomClient(
            proxy.url,
            token,
            state_file=tmp_path / "state.json",
            parallel=3,
            rate_limit=4_000_000,  # slow enough for the files to overlap
        ) as client,
    ):
        result = await client.upload(event["id"], [tmp_path])
    assert len(result.uploaded) == 4, result.failed
    chunk_puts = {p for p in proxy.most_at_once if "/chunks/" in p}
    uploads_at_once = {p.split("/chunks/")[0] for p in chunk_puts}
    assert len(uploads_at_once) > 1, proxy.most_at_once
    assert len(chunk_puts) <= 3, proxy.most_at_once


async def test_a_dry_run_says_what_would_go_and_sends_nothing(
    capi: Client, make_token: TokenMaker, tmp_path: Path
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    shoot = tmp_path / "shoot"
    (shoot / "rejects").mkdir(parents=True)
    (shoot / "a.jpg").write_bytes(jpeg_bytes(200, 100))
    (shoot / "._a.jpg").write_bytes(b"\0\5\x16\7 AppleDouble, not a photo")
    (shoot / "clip.mp4").write_bytes(mp4(CHUNK + 10))
    (shoot / "rejects" / "blurry.jpg").write_bytes(jpeg_bytes(50, 50))
    (shoot / "c.tmp.jpg").write_bytes(jpeg_bytes(60, 60))
    state = tmp_path / "state.json"
    async with DarkroomClient(base_url(capi), token, state_file=state) as client:
        first = await client.upload(event["id"], [shoot / "a.jpg"])
    assert list(first.uploaded) == [str(shoot / "a.jpg")]
    photos = capi.server.app[MONGO_DB][records.PHOTOS]
    proc = run_cli(
        capi,
        token,
        str(shoot),
        "--event",
        event["slug"],
        "--state",
        str(state),
        "--dry-run",
        "--exclude",
        "rejects/*",
        "--exclude",
        "*.tmp.*",
    )
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[:-1] == [
        f"send   {shoot / 'clip.mp4'} (5.2 MB)",
        f"there  {shoot / 'a.jpg'}",
    ], out
    assert lines[-1].startswith("would send 1 files, 5.2 MB; 1 already there")
    assert await photos.count_documents({"event_id": event["id"]}) == 1


async def test_a_refused_creation_is_asked_again_with_a_new_key_once_the_cause_is_gone(
    capi: Client, make_token: TokenMaker, tmp_path: Path
) -> None:
    # The server keeps a refusal as the answer to its Idempotency-Key: a rerun with the same
    # key would be refused for as long as the key lives, whatever changed meanwhile.
    token = await make_token()
    event = await make_event(capi, token)
    full = await capi.patch(f"/v1/events/{event['id']}", json={"photo_cap": 1}, headers=auth(token))
    assert full.status == 200, await full.text()
    (tmp_path / "first.jpg").write_bytes(jpeg_bytes(64, 64))
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(mp4(CHUNK + 5))
    state = tmp_path / "state.json"
    async with DarkroomClient(base_url(capi), token, state_file=state) as client:
        filled = await client.upload(event["id"], [tmp_path / "first.jpg"])
        assert filled.ok, filled.failed
        first = await client.upload(event["id"], [clip])
    assert "photo_cap_exceeded" in first.failed[str(clip)], first
    room = await capi.patch(
        f"/v1/events/{event['id']}", json={"photo_cap": None}, headers=auth(token)
    )
    assert room.status == 200, await room.text()
    async with DarkroomClient(base_url(capi), token, state_file=state) as client:
        second = await client.upload(event["id"], [clip])
    assert list(second.uploaded) == [str(clip)], second.failed

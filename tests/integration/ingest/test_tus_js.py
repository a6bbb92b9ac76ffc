"""tus 1.0.0 with the real JavaScript client, tus-js-client (npm, pinned in package.json), in
Node: a plain upload in 1 MiB pieces, a parallel one (concatenation: partial uploads joined by a
final one), a resume after the client process is killed, and a file sent again (the photo
already in the event answers it), also while tuspy sends the same file.

The client runs as a subprocess (tus_js_client.mjs beside this file) that reports in JSON lines;
the API keeps serving in this process's event loop meanwhile. Node and the npm packages are
required: without them these tests fail (``make install`` puts node_modules in place)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.messaging import QueueSpec
from darkroom_kit.storage import MIB

from tests.factories.api import (
    CHUNK,
    Client,
    TokenMaker,
    auth,
    make_event,
    the_only_photo,
)
from tests.factories.media import jpeg_like
from tests.factories.tus import (
    assert_finished_as,
    assert_one_photo,
    tus_path,
    tuspy,
    tuspy_answer,
    upload_status,
)

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "tus_js_client.mjs"
ROOT = HERE.parents[2]
SIZE = 12 * 1000 * 1000 + 4321  # ~12 MB: two whole parts and a bit, in 1 MiB PATCHes
# A file sent twice: a whole part and a tail of 1 MiB pieces, the second time too.
COPY_SIZE = CHUNK + MIB + 4321
TUS = {"Tus-Resumable": "1.0.0"}


def node() -> str:
    found = shutil.which("node") or ("/usr/bin/node" if Path("/usr/bin/node").exists() else None)
    assert found is not None, "Node.js is required for the tus-js-client tests (no `node` found)"
    package = ROOT / "node_modules" / "tus-js-client" / "package.json"
    assert package.exists(), f"{package} is missing: run `make install` (npm ci from the lock)"
    return found


class JsClient:
    """One run of tus_js_client.mjs: its JSON lines as they arrive."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr
        self.lines: list[dict[str, Any]] = []

    async def next_line(self, timeout: float = 60) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            return None
        line: dict[str, Any] = json.loads(raw)
        self.lines.append(line)
        return line

    async def run_to_end(self, timeout: float = 90) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while await self.next_line() is not None:
                pass
            await self.proc.wait()
        assert self.proc.returncode == 0, self.report()
        return self.lines

    def report(self) -> str:
        return (
            f"exit {self.proc.returncode}\nstdout:\n"
            + "\n".join(json.dumps(line) for line in self.lines[-30:])
            + f"\nstderr:\n{self.stderr.read_text()[-4000:]}"
        )

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["type"] == kind]


async def start_js(tmp_path: Path, run: str, **options: Any) -> JsClient:
    stderr = tmp_path / f"{run}.stderr"
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            node(),
            str(SCRIPT),
            json.dumps(options),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
        )
    return JsClient(proc, stderr)


def options_for(api: Client, token: str, event_id: str, path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "endpoint": str(api.make_url("/v1/tus/")),
        "token": token,
        "event": event_id,
        "path": str(path),
        "filename": path.name,
        "filetype": "image/jpeg",
        "chunkSize": MIB,
        "source": "stream",
        **extra,
    }


async def test_tus_js_client_uploads_in_1_mib_pieces_and_makes_one_photo(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings, tmp_path: Path
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(SIZE)
    path = tmp_path / "ceremony.jpg"
    path.write_bytes(data)

    client = await start_js(tmp_path, "plain", **options_for(capi, token, event["id"], path))
    lines = await client.run_to_end()

    assert client.of_type("error") == [], client.report()
    [start] = client.of_type("start")
    assert start["offset"] == 0
    posts = [r for r in client.of_type("response") if r["method"] == "POST"]
    assert [p["status"] for p in posts] == [201], client.report()
    patches = [r for r in client.of_type("response") if r["method"] == "PATCH"]
    assert all(p["status"] == 204 for p in patches), client.report()
    assert len(patches) == -(-SIZE // MIB)  # one PATCH per MiB piece, none repeated
    assert [p["offset"] for p in patches] == [min((i + 1) * MIB, SIZE) for i in range(len(patches))]
    # Only the PATCH with the last byte made the photo, and said so.
    assert [p["photo_id"] is not None for p in patches] == [False] * (len(patches) - 1) + [True]
    [success] = client.of_type("success")
    assert success == lines[-1]
    photo_id = await the_only_photo(capi, token, event["id"], data)
    assert success["photo_id"] == photo_id
    status = await upload_status(capi, token, success["url"])
    assert (status["state"], status["size"], status["protocol"]) == ("completed", SIZE, "tus")
    assert status["photo_id"] == photo_id


async def test_tus_js_client_parallel_uploads_are_joined_into_one_photo(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings, tmp_path: Path
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(SIZE)
    path = tmp_path / "joined.jpg"
    path.write_bytes(data)

    client = await start_js(
        tmp_path,
        "parallel",
        **options_for(
            capi,
            token,
            event["id"],
            path,
            source="buffer",
            # Its defaults: `metadata` (the event) goes with the final upload only, and the
            # partial uploads name no event until the final one joins them.
            parallelUploads=3,
        ),
    )
    await client.run_to_end()

    assert client.of_type("error") == [], client.report()
    posts = [r for r in client.of_type("response") if r["method"] == "POST"]
    partials = [p for p in posts if p["concat"] == "partial"]
    finals = [p for p in posts if p["concat"] is not None and p["concat"].startswith("final;")]
    assert len(partials) == 3, client.report()
    assert all(p["status"] == 201 for p in posts), client.report()
    # The final upload names the three partials, in order, and is made at once: its creation
    # answer carries the photo (no PATCH goes to it).
    [final] = finals
    assert len(final["concat"].removeprefix("final;").split(" ")) == 3
    assert final["photo_id"] is not None, client.report()
    patches = [r for r in client.of_type("response") if r["method"] == "PATCH"]
    assert all(p["status"] == 204 and p["photo_id"] is None for p in patches), client.report()
    [success] = client.of_type("success")
    photo_id = await the_only_photo(capi, token, event["id"], data)
    assert success["photo_id"] == final["photo_id"] == photo_id
    status = await upload_status(capi, token, success["url"])
    assert (status["state"], status["size"]) == ("completed", SIZE)
    # The partial uploads are spent.
    for url in final["concat"].removeprefix("final;").split(" "):
        gone = await capi.head(tus_path(url), headers={**TUS, **auth(token)})
        assert gone.status == 410


async def server_offset(api: Client, token: str, url: str) -> int:
    """The upload's offset once no request is changing it any more (the killed client's last
    PATCH may still be finishing on the server)."""
    path = tus_path(url)
    last = -1
    for _ in range(100):
        resp = await api.head(path, headers={**TUS, **auth(token)})
        assert resp.status == 200, await resp.text()
        offset = int(resp.headers["Upload-Offset"])
        if offset == last:
            return offset
        last = offset
        await asyncio.sleep(0.3)
    raise AssertionError(f"the offset of {url} never settled")


async def test_tus_js_client_resumes_after_it_is_killed_mid_file(
    capi: Client, make_token: TokenMaker, chunk_settings: IngestSettings, tmp_path: Path
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(SIZE)
    path = tmp_path / "long.jpg"
    path.write_bytes(data)
    options = options_for(capi, token, event["id"], path, storage=str(tmp_path / "tus-urls.json"))

    # First run: killed (SIGKILL, no goodbye) once a whole part and a tail are on the server.
    first = await start_js(tmp_path, "first", **options)
    killed_at = 0
    async with asyncio.timeout(60):
        while (line := await first.next_line()) is not None:
            if line["type"] == "chunk" and line["offset"] >= CHUNK + MIB:
                killed_at = line["offset"]
                os.kill(first.proc.pid, signal.SIGKILL)
                break
        await first.proc.wait()
    assert first.proc.returncode == -signal.SIGKILL, first.report()
    assert first.of_type("previous") == [{"type": "previous", "count": 0}]
    assert CHUNK < killed_at < SIZE, first.report()
    assert first.of_type("success") == []
    [created] = [r for r in first.of_type("response") if r["method"] == "POST"]
    patch_url = next(r["url"] for r in first.of_type("response") if r["method"] == "PATCH")
    held = await server_offset(capi, token, patch_url)
    assert killed_at <= held < SIZE
    assert created["status"] == 201

    # Second run, same file, same URL storage: it finds the upload and resumes from the
    # server's offset, not from 0.
    second = await start_js(tmp_path, "second", **options)
    await second.run_to_end()
    assert second.of_type("error") == [], second.report()
    assert second.of_type("previous") == [{"type": "previous", "count": 1}], second.report()
    [start] = second.of_type("start")
    assert start["offset"] == held > 0, second.report()
    assert start["url"] == patch_url  # a HEAD of the same upload, no new creation
    assert [r for r in second.of_type("response") if r["method"] == "POST"] == []
    patches = [r for r in second.of_type("response") if r["method"] == "PATCH"]
    assert patches
    assert all(p["url"] == patch_url for p in patches)
    assert patches[0]["offset"] == min(held + MIB, SIZE)
    [success] = second.of_type("success")
    photo_id = await the_only_photo(capi, token, event["id"], data)
    assert success["photo_id"] == photo_id
    status = await upload_status(capi, token, success["url"])
    assert (status["state"], status["size"]) == ("completed", SIZE)
    # On success the client forgot the upload (removeFingerprintOnSuccess).
    assert json.loads((tmp_path / "tus-urls.json").read_text()) == {}


def responses(client: JsClient, method: str) -> list[dict[str, Any]]:
    return [r for r in client.of_type("response") if r["method"] == method]


@pytest.mark.parametrize(
    ("copy_name", "parallel"),
    [("ceremony.jpg", 1), ("IMG_0042.jpeg", 1), ("IMG_0042.jpeg", 3)],
    ids=["same-file", "other-name", "other-name-parallel"],
)
async def test_tus_js_client_sending_a_file_again_is_answered_with_the_photo_already_there(
    capi: Client,
    make_token: TokenMaker,
    chunk_settings: IngestSettings,
    watch_events: QueueSpec,
    tmp_path: Path,
    copy_name: str,
    parallel: int,
) -> None:
    """The same bytes again in the event, by the same file, under another name, or in parallel
    partial uploads joined by a final one: sent whole, then answered with the photo already
    there (``X-Darkroom-Duplicate-Of``); one photo, stored and announced once."""
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(COPY_SIZE)
    path = tmp_path / "ceremony.jpg"
    path.write_bytes(data)
    first = await start_js(tmp_path, "first", **options_for(capi, token, event["id"], path))
    await first.run_to_end()
    assert first.of_type("error") == [], first.report()
    [made] = first.of_type("success")
    photo_id = made["photo_id"]
    assert photo_id is not None, first.report()
    assert made["duplicate_of"] is None, first.report()

    copy = tmp_path / copy_name
    if copy != path:
        copy.write_bytes(data)
    options = options_for(capi, token, event["id"], copy, parallelUploads=parallel)
    if parallel > 1:
        options["source"] = "buffer"  # tus-js-client slices a buffer, not a stream
    second = await start_js(tmp_path, "second", **options)
    await second.run_to_end()
    assert second.of_type("error") == [], second.report()
    # A new upload (tus-js-client in Node keeps no URLs: nothing resumed), every byte sent.
    posts, patches = responses(second, "POST"), responses(second, "PATCH")
    assert [p["status"] for p in posts] == [201] * (1 if parallel == 1 else parallel + 1)
    assert all(p["status"] == 204 for p in patches), second.report()
    reached: dict[str, int] = {}
    for r in patches:
        reached[r["url"]] = max(reached.get(r["url"], 0), r["offset"])
    assert sum(reached.values()) == len(data), second.report()
    # The answer that completed it names the photo there, as a copy of it; no other answer
    # names a photo.
    named = [r for r in second.of_type("response") if r["photo_id"] is not None]
    assert [(r["photo_id"], r["duplicate_of"]) for r in named] == [(photo_id, photo_id)]
    if parallel > 1:
        assert named[0]["method"] == "POST"
        assert named[0]["concat"].startswith("final;")
    [again] = second.of_type("success")
    assert (again["photo_id"], again["duplicate_of"]) == (photo_id, photo_id)
    assert again["url"] != made["url"]

    await assert_finished_as(capi, token, made["url"], photo_id, copy=False)
    await assert_finished_as(capi, token, again["url"], photo_id, copy=True)
    await assert_one_photo(
        capi,
        token,
        event["id"],
        data,
        photo_id,
        (chunk_settings.amqp_url, watch_events.name),
        "ceremony.jpg",
    )


async def test_tus_js_client_and_tuspy_sending_one_file_at_once_make_one_photo(
    capi: Client,
    make_token: TokenMaker,
    chunk_settings: IngestSettings,
    watch_events: QueueSpec,
    tmp_path: Path,
) -> None:
    """tuspy sends a file while tus-js-client's upload of the same bytes is in flight: whichever
    is whole first is the photo, the other is answered with it; nothing doubled, nothing lost."""
    token = await make_token()
    event = await make_event(capi, token)
    data = jpeg_like(COPY_SIZE)
    path = tmp_path / "ceremony.jpg"
    path.write_bytes(data)
    js = await start_js(tmp_path, "js", **options_for(capi, token, event["id"], path))
    async with asyncio.timeout(60):
        while (line := await js.next_line()) is not None and line["type"] != "chunk":
            pass
    assert line is not None, js.report()
    assert line["offset"] < len(data), js.report()  # in flight: created, not whole yet
    uploader = tuspy(capi, token, event["id"], path)
    sent = asyncio.create_task(asyncio.to_thread(uploader.upload))
    await js.run_to_end()
    await sent

    assert js.of_type("error") == [], js.report()
    [done] = js.of_type("success")
    assert uploader.url is not None
    assert uploader.offset == len(data)
    answers = {done["url"]: (done["photo_id"], done["duplicate_of"])}
    answers[uploader.url] = tuspy_answer(uploader)
    named = {made for made, _ in answers.values()}
    assert len(named) == 1, answers  # one photo, named by both uploads
    [photo_id] = named
    assert photo_id is not None
    # Exactly one of them made the photo; the other names it as the photo already there.
    assert sorted(copy_of is None for _, copy_of in answers.values()) == [False, True], answers
    for url, (_, copy_of) in answers.items():
        assert copy_of in (None, photo_id)
        await assert_finished_as(capi, token, url, photo_id, copy=copy_of is not None)
    await assert_one_photo(
        capi, token, event["id"], data, photo_id, (chunk_settings.amqp_url, watch_events.name)
    )

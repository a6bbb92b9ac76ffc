"""The upload client stands alone and the server stands without it.

A photographer installs only ``libs/client``: it is built into a fresh virtual environment here,
where no server package may follow it in, and its command uploads to the live API. The server's
CLI runs without the client, and is reached the way README says (``uv run darkroom ...``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from darkroom_ingest.cli import UPLOAD_CLIENT_MISSING
from darkroom_ingest.settings import IngestSettings
from packaging.requirements import Requirement

from tests.factories.api import CHUNK, Client, TokenMaker, auth, base_url, make_event
from tests.factories.media import jpeg_bytes, mp4
from tests.factories.servers import cli_env

ROOT = Path(__file__).resolve().parents[3]
SERVER_MODULES = (
    "darkroom_kit",
    "darkroom_ingest",
    "darkroom_thumbnailing",
    "darkroom_repair",
    "darkroom_webhooks",
    "darkroom_dev",
)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without what would let a child see this workspace's packages."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **(extra or {})}


def run(args: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, **kwargs
    )


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``libs/client`` installed as a photographer would: its bin directory.
    uv reuses its cache of wheels; without uv, the venv module and pip do the same, slower."""
    where = tmp_path_factory.mktemp("standalone")
    venv = where / "venv"
    python = venv / "bin" / "python"
    env = clean_env()
    uv = shutil.which("uv")
    # Run from outside the checkout, so no project configuration of the workspace applies.
    if uv:
        steps: list[list[str | Path]] = [
            [uv, "venv", "--quiet", venv, "--python", sys.executable],
            [uv, "pip", "install", "--quiet", "--python", python, ROOT / "libs" / "client"],
        ]
    else:
        steps = [
            [sys.executable, "-m", "venv", venv],
            [python, "-m", "pip", "install", "--quiet", ROOT / "libs" / "client"],
        ]
    for step in steps:
        done = run(step, cwd=where, env=env, timeout=240)
        assert done.returncode == 0, f"{step}: {done.stderr}"
    return venv / "bin"


@pytest.mark.timeout(300)
def test_the_client_installs_without_any_server_package(standalone: Path) -> None:
    probe = f"""
import importlib, importlib.metadata, json
found = {{}}
for name in ["darkroom_client", "darkroom_client.cli", *{list(SERVER_MODULES)!r}]:
    try:
        importlib.import_module(name)
        found[name] = True
    except ModuleNotFoundError:
        found[name] = False
dists = sorted(d.metadata["Name"] for d in importlib.metadata.distributions())
print(json.dumps({{"found": found, "dists": dists}}))
"""
    # -I: neither PYTHONPATH nor the user's site-packages, only what the venv holds.
    done = run([standalone / "python", "-I", "-c", probe], cwd=standalone, env=clean_env())
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["found"] == {
        "darkroom_client": True,
        "darkroom_client.cli": True,
        **dict.fromkeys(SERVER_MODULES, False),
    }
    assert [d for d in seen["dists"] if d.lower().startswith("darkroom")] == ["darkroom-client"]
    assert (standalone / "darkroom-upload").is_file()
    assert not (standalone / "darkroom").exists()


@pytest.mark.timeout(300)
async def test_the_installed_command_uploads_to_the_live_api(
    standalone: Path, capi: Client, make_token: TokenMaker, tmp_path: Path
) -> None:
    command = standalone / "darkroom-upload"
    shown = await asyncio.to_thread(run, [command, "--help"], env=clean_env(), timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: darkroom-upload")

    token = await make_token()
    event = await make_event(capi, token)
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    photo, video = jpeg_bytes(320, 240), mp4(CHUNK + 4321)
    (shoot / "a.jpg").write_bytes(photo)
    (shoot / "clip.mp4").write_bytes(video)
    # As README shows: the URL and the token from the environment, a folder and an event slug.
    state_home = tmp_path / "state-home"
    env = clean_env(
        {
            "DARKROOM_URL": base_url(capi),
            "DARKROOM_TOKEN": token,
            "XDG_STATE_HOME": str(state_home),
        }
    )
    done = await asyncio.to_thread(
        run, [command, shoot, "--event", event["slug"]], cwd=tmp_path, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "2 uploaded, 0 already there, 0 duplicates of photos there, 0 failed" in done.stderr
    # The resume state is the user's, not the folder's: nothing left in the working directory,
    # and the same shoot sent again from another directory sends nothing.
    assert (state_home / "darkroom" / "upload-state.json").is_file()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".darkroom")]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = await asyncio.to_thread(
        run, [command, shoot, "--event", event["slug"]], cwd=elsewhere, env=env, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert "0 uploaded, 2 already there, 0 duplicates of photos there, 0 failed" in again.stderr
    for name, data in (("a.jpg", photo), ("clip.mp4", video)):
        served = await capi.get(f"/photos/{event['slug']}/{name}", headers=auth(token))
        assert served.status == 200, name
        assert await served.read() == data


async def test_darkroom_upload_on_the_server_hands_over_to_the_client(
    capi: Client, make_token: TokenMaker, tmp_path: Path
) -> None:
    token = await make_token()
    event = await make_event(capi, token)
    photo = tmp_path / "b.jpg"
    photo.write_bytes(jpeg_bytes(100, 80))
    args = ["--url", base_url(capi), "--token", token, photo, "--event", event["slug"]]
    done = await asyncio.to_thread(
        run,
        [Path(sys.executable).parent / "darkroom", "upload", *args],
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "1 uploaded" in done.stderr
    served = await capi.get(f"/photos/{event['slug']}/b.jpg", headers=auth(token))
    assert await served.read() == photo.read_bytes()


def test_the_server_does_not_require_the_client() -> None:
    from importlib.metadata import requires

    needs = [Requirement(line) for line in requires("darkroom-ingest") or []]
    client = [r for r in needs if r.name == "darkroom-client"]
    assert client, "darkroom-ingest[upload] offers the client"
    # Only behind the `upload` extra: no marker would make every server install pull it in.
    assert all(r.marker is not None and "extra" in str(r.marker) for r in client)


async def test_the_server_runs_without_the_client(
    api: Client, ingest_settings: IngestSettings
) -> None:
    # A finder ahead of all others fails darkroom_client the way a missing package does.
    without_client = """
import sys

class NoClient:
    def find_spec(self, name, path=None, target=None):
        if name == "darkroom_client":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoClient())
import darkroom_ingest.app, darkroom_ingest.main
from darkroom_ingest.cli import main
sys.exit(main(sys.argv[1:]))
"""

    def darkroom(*args: str) -> subprocess.CompletedProcess[str]:
        return run(
            [sys.executable, "-c", without_client, *args],
            env=clean_env(cli_env(ingest_settings)),
            timeout=60,
        )

    made = await asyncio.to_thread(darkroom, "token", "create", "--scopes", "photos.read")
    assert made.returncode == 0, made.stderr
    me = await api.get("/v1/me", headers=auth(made.stdout.strip()))
    assert me.status == 200
    upload = await asyncio.to_thread(darkroom, "upload", "x.jpg", "--event", "e")
    assert upload.returncode == 2
    assert UPLOAD_CLIENT_MISSING in upload.stderr


async def test_the_admin_cli_runs_as_readme_says(
    api: Client, ingest_settings: IngestSettings
) -> None:
    readme = (ROOT / "README.md").read_text()
    create = "uv run darkroom token create --scopes photos.read,photos.write --name anna"
    sweep = "uv run darkroom orphans sweep --dry-run"
    assert create in readme
    assert sweep in readme
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on the PATH (make install puts it there)")
    # UV_FROZEN: the documented command, but a test never rewrites the shared uv.lock.
    env = {**clean_env(cli_env(ingest_settings)), "UV_FROZEN": "1"}

    def documented(line: str) -> subprocess.CompletedProcess[str]:
        return run([uv, *line.split()[1:]], cwd=ROOT, env=env, timeout=120)

    made = await asyncio.to_thread(documented, create)
    assert made.returncode == 0, made.stderr
    me = await (await api.get("/v1/me", headers=auth(made.stdout.strip()))).json()
    assert (me["name"], me["scopes"]) == ("anna", ["photos.read", "photos.write"])
    swept = await asyncio.to_thread(documented, sweep)
    assert swept.returncode == 0, swept.stderr
    report = json.loads(swept.stdout)
    assert report["dry_run"] is True
    assert report["deleted_objects"] == 0

"""The server-side CLI, run as a real process against the test database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

from darkroom_ingest.settings import IngestSettings

from tests.factories.api import Client, auth
from tests.factories.servers import cli_env
from tests.factories.servers import run_cli as cli


async def test_token_create_list_revoke(api: Client, ingest_settings: IngestSettings) -> None:
    made = cli(
        ingest_settings,
        "token",
        "create",
        "--scopes",
        "photos.read,webhooks.manage",
        "--name",
        "crm",
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    me = await (await api.get("/v1/me", headers=auth(token))).json()
    assert me["name"] == "crm"
    assert me["scopes"] == ["photos.read", "webhooks.manage"]
    listed = json.loads(cli(ingest_settings, "token", "list").stdout)
    mine = next(t for t in listed if t["id"] == me["id"])
    assert token not in json.dumps(listed)  # never shown again
    assert mine["revoked"] is False
    assert cli(ingest_settings, "token", "revoke", me["id"]).returncode == 0
    resp = await api.get("/v1/me", headers=auth(token))
    assert resp.status == 401
    assert (await resp.json())["code"] == "invalid_token"
    assert cli(ingest_settings, "token", "revoke", "tok_unknown").returncode == 1


def test_unknown_scope_is_refused(ingest_settings: IngestSettings) -> None:
    bad = cli(ingest_settings, "token", "create", "--scopes", "photos.read,root")
    assert bad.returncode == 2
    assert "unknown scope 'root'" in bad.stderr


async def test_a_token_is_bound_to_an_event_that_exists_by_slug_or_id(
    api: Client, ingest_settings: IngestSettings
) -> None:
    from darkroom_ingest.cli import create_token

    from tests.factories.api import make_event

    owner = await create_token(ingest_settings, "owner", ["events.write", "events.read"], None)
    event = await make_event(api, owner)
    by_slug = cli(
        ingest_settings, "token", "create", "--scopes", "photos.read", "--event", event["slug"]
    )
    assert by_slug.returncode == 0, by_slug.stderr
    me = await (await api.get("/v1/me", headers=auth(by_slug.stdout.strip()))).json()
    assert me["event_id"] == event["id"]
    listed = json.loads(cli(ingest_settings, "token", "list").stdout)
    assert next(t for t in listed if t["id"] == me["id"])["event_id"] == event["id"]
    for missing in ("no-such-event", "ev_00000000000000000000000000"):
        refused = cli(
            ingest_settings, "token", "create", "--scopes", "photos.read", "--event", missing
        )
        assert refused.returncode == 1
        assert f"no event with the id or slug {missing!r}" in refused.stderr

    # make token passes EVENT= on (it used to drop it and make an all-events token).
    made = await asyncio.to_thread(
        subprocess.run,
        ["make", "-s", "token", "SCOPES=photos.read", "NAME=by-make", f"EVENT={event['slug']}"],
        cwd=Path(__file__).parents[3],
        env={**os.environ, **cli_env(ingest_settings)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    bound = await (await api.get("/v1/me", headers=auth(made.stdout.strip()))).json()
    assert bound["event_id"] == event["id"]

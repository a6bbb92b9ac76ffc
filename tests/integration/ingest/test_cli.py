"""The server-side CLI, run as a real process against the test database."""

from __future__ import annotations

import json

from darkroom_ingest.settings import IngestSettings

from tests.factories.api import Client, auth
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

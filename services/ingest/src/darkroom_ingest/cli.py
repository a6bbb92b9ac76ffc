"""``darkroom``: the server-side command line (tokens, the orphan sweep)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from darkroom_kit.clock import ms_to_iso, now_ms
from darkroom_kit.mongo import open_mongo
from darkroom_kit.storage import open_object_store
from darkroom_kit.stored.events import EventRecord

from darkroom_ingest.guests import GuestLinks, page_url
from darkroom_ingest.orphans import OrphanSweeper
from darkroom_ingest.settings import IngestSettings
from darkroom_ingest.stores import EventStore, TokenStore, ensure_indexes
from darkroom_ingest.tokens import generate_token, hash_token, parse_scopes


async def create_token(
    settings: IngestSettings, name: str, scopes: list[str], event: str | None
) -> str:
    """A new token; ``event`` (an id or a slug) binds it to that event, which must exist (a
    token bound to nothing that exists would be refused everywhere, or worse, bound later)."""
    client = open_mongo(settings)
    try:
        db = client[settings.mongo_db]
        await ensure_indexes(db)
        event_id = None
        if event is not None:
            events = EventStore(db)
            found = await events.get(event) or await events.by_slug(event)
            if found is None:
                raise LookupError(f"no event with the id or slug {event!r}")
            event_id = str(found["_id"])
        token = generate_token()
        await TokenStore(db).create(name, hash_token(token), scopes, event_id)
        return token
    finally:
        await client.close()


async def _list(settings: IngestSettings) -> list[dict[str, object]]:
    client = open_mongo(settings)
    try:
        tokens = await TokenStore(client[settings.mongo_db]).list()
        return [
            {
                "id": t.id,
                "name": t.name,
                "scopes": t.scopes,
                "event_id": t.event_id,
                "revoked": t.revoked,
                "created_at": ms_to_iso(t.created_ms),
            }
            for t in tokens
        ]
    finally:
        await client.close()


async def _revoke(settings: IngestSettings, token_id: str) -> bool:
    client = open_mongo(settings)
    try:
        return await TokenStore(client[settings.mongo_db]).revoke(token_id)
    finally:
        await client.close()


async def sweep_orphans(
    settings: IngestSettings, *, dry_run: bool, grace_seconds: float, max_deletions: int
) -> dict[str, Any]:
    client = open_mongo(settings)
    try:
        async with open_object_store(settings) as store:
            sweeper = OrphanSweeper(
                client[settings.mongo_db],
                store,
                grace_seconds=grace_seconds,
                max_deletions=max_deletions,
            )
            return (await sweeper.sweep(dry_run=dry_run)).as_dict()
    finally:
        await client.close()


async def create_guest_link(
    settings: IngestSettings,
    event_id: str,
    label: str,
    *,
    expires_in_hours: float | None,
    max_files: int | None,
    max_bytes: int | None,
) -> dict[str, Any]:
    """A guest upload link, as ``POST /v1/events/{id}/guest-links`` makes one."""
    client = open_mongo(settings)
    try:
        db = client[settings.mongo_db]
        event = EventRecord.maybe(await EventStore(db).get(event_id))
        if event is None:
            raise LookupError(f"no event {event_id}")
        expires_ms = now_ms() + int(expires_in_hours * 3_600_000) if expires_in_hours else None
        link, token = await GuestLinks(db).create(
            event, label, expires_ms=expires_ms, max_files=max_files, max_bytes=max_bytes
        )
        return {
            "id": link.id,
            "event_id": event.id,
            "url": page_url(settings.public_base_url, token),
            "token": token,
            "expires_at": ms_to_iso(link.expires_ms),
            "max_files": link.max_files,
            "max_bytes": link.max_bytes,
        }
    finally:
        await client.close()


def _non_negative(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a number of seconds >= 0")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value} is not a number > 0")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return number


UPLOAD_CLIENT_MISSING = (
    "darkroom upload: the upload client is not installed here: "
    "pip install ./libs/client (it gives darkroom-upload), "
    "or install darkroom-ingest[upload]"
)


def _client(command: str, argv: list[str]) -> int:
    """The photographer's side, the same client as ``darkroom-upload`` and ``darkroom-watch``.
    Imported only here: the server does not depend on the client, so an install without it
    still runs everything else."""
    try:
        if command == "upload":
            from darkroom_client.cli import main as client_main  # noqa: PLC0415
        else:
            from darkroom_client.watch import main as client_main  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "darkroom_client":
            raise
        print(
            UPLOAD_CLIENT_MISSING.replace("darkroom upload", f"darkroom {command}"), file=sys.stderr
        )
        return 2
    return client_main(argv, prog=f"darkroom {command}")


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] in (["upload"], ["watch"]):
        return _client(args_in[0], args_in[1:])
    parser = argparse.ArgumentParser(prog="darkroom", description="darkroom server commands")
    sub = parser.add_subparsers(dest="group", required=True)
    sub.add_parser("upload", help="upload photos and videos (see darkroom upload --help)")
    sub.add_parser("watch", help="a hot folder: upload new files (see darkroom watch --help)")
    token = sub.add_parser("token", help="manage API tokens").add_subparsers(
        dest="cmd", required=True
    )
    create = token.add_parser("create", help="create a token and print it (shown once)")
    create.add_argument(
        "--scopes",
        required=True,
        help="comma-separated: photos.read,photos.write,events.read,events.write,"
        "webhooks.manage,admin",
    )
    create.add_argument("--name", default="cli", help="a label to recognise the token by")
    create.add_argument(
        "--event", default=None, help="bind the token to one event (its id or slug)"
    )
    token.add_parser("list", help="list tokens (never their values)")
    revoke = token.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("token_id")
    guest = sub.add_parser("guest-link", help="guest upload links").add_subparsers(
        dest="cmd", required=True
    )
    link = guest.add_parser(
        "create", help="make a link whose page only adds photos to one event; prints it as JSON"
    )
    link.add_argument("--event", required=True, help="the event's id")
    link.add_argument("--label", default="guests", help="what the link is for")
    link.add_argument(
        "--expires-in-hours", type=_positive_float, default=None, help="default: never"
    )
    link.add_argument("--max-files", type=_positive_int, default=None, help="default: no limit")
    link.add_argument("--max-bytes", type=_positive_int, default=None, help="default: no limit")
    orphans = sub.add_parser(
        "orphans", help="objects in S3 whose record never landed"
    ).add_subparsers(dest="cmd", required=True)
    sweep = orphans.add_parser(
        "sweep",
        help="delete orphan objects and abort orphan multipart uploads older than the grace "
        "period; prints what was found as JSON",
    )
    sweep.add_argument("--dry-run", action="store_true", help="report the orphans, delete nothing")
    sweep.add_argument(
        "--grace-seconds",
        type=_non_negative,
        default=None,
        help="only what is older than this (default: ORPHAN_GRACE_SECONDS, 6 h); a batch "
        "upload still running must be younger than it",
    )
    sweep.add_argument(
        "--max-deletions",
        type=_positive_int,
        default=None,
        help="stop after this many orphans (default: ORPHAN_MAX_DELETIONS)",
    )
    args = parser.parse_args(argv)
    settings = IngestSettings()
    if args.group == "orphans":
        report = asyncio.run(
            sweep_orphans(
                settings,
                dry_run=args.dry_run,
                grace_seconds=(
                    settings.orphan_grace_seconds
                    if args.grace_seconds is None
                    else args.grace_seconds
                ),
                max_deletions=args.max_deletions or settings.orphan_max_deletions,
            )
        )
        print(json.dumps(report, indent=2))
        return 0
    if args.group == "guest-link":
        try:
            made = asyncio.run(
                create_guest_link(
                    settings,
                    args.event,
                    args.label,
                    expires_in_hours=args.expires_in_hours,
                    max_files=args.max_files,
                    max_bytes=args.max_bytes,
                )
            )
        except LookupError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(json.dumps(made, indent=2))
        return 0
    if args.cmd == "create":
        try:
            scopes = [s.value for s in parse_scopes(args.scopes)]
        except ValueError as exc:
            parser.error(str(exc))
        try:
            print(asyncio.run(create_token(settings, args.name, scopes, args.event)))
        except LookupError as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    if args.cmd == "list":
        print(json.dumps(asyncio.run(_list(settings)), indent=2))
        return 0
    if not asyncio.run(_revoke(settings, args.token_id)):
        print(f"no token {args.token_id}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

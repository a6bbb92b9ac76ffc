"""Guest upload links (``/v1/events/{event_id}/guest-links``) and the page a guest opens
(``/guest#<token>``)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from darkroom_kit.clock import ms_to_iso, now_ms
from darkroom_kit.stored.tokens import TokenRecord

from darkroom_ingest import errors
from darkroom_ingest.api.declare import Call, Reply, RouteTable
from darkroom_ingest.errors import EVENT_NOT_FOUND, GUEST_LINK_NOT_FOUND
from darkroom_ingest.guests import page_url
from darkroom_ingest.schemas.guests import GuestLinkCreate, GuestLinkList, GuestLinkOut
from darkroom_ingest.tokens import Scope

routes = RouteTable("guests")

PAGE_DIR = Path(__file__).resolve().parent.parent / "guest_page"
# The page's files: its own, and tus-js-client's browser build, which `make install` copies
# here from node_modules (pinned in package-lock.json).
ASSETS = {"guest.js": "text/javascript", "tus.min.js": "text/javascript"}
# Looked up once, not with a blocking stat per request: they change only with `make install`.
INSTALLED = frozenset(name for name in ASSETS if (PAGE_DIR / name).is_file())


def _out(link: TokenRecord, base_url: str, token: str | None = None) -> GuestLinkOut:
    return GuestLinkOut(
        id=link.id,
        event_id=link.event_id or "",
        label=link.name,
        url=page_url(base_url, token) if token else None,
        token=token,
        expires_at=ms_to_iso(link.expires_ms),
        max_files=link.max_files,
        max_bytes=link.max_bytes,
        files_used=link.files_used,
        bytes_used=link.bytes_used,
        revoked=link.revoked,
        created_at=ms_to_iso(link.created_ms) or "",
    )


@routes.post(
    "/v1/events/{event_id}/guest-links",
    operation_id="createGuestLink",
    summary="Make a guest upload link",
    scope=Scope.EVENTS_WRITE,
    body=GuestLinkCreate,
    response=GuestLinkOut,
    status=201,
    errors=(EVENT_NOT_FOUND,),
)
async def create_guest_link(call: Call, body: GuestLinkCreate) -> Reply[GuestLinkOut]:
    """A page for guests that adds photos to this event and does nothing else: its token has
    only the scope ``photos.upload`` (no listing, reading or deleting), may expire and may be
    limited in files and bytes. Share ``url``; it is shown only now."""
    deps = call.deps
    event = await deps.events.get(call.principal, call.path("event_id"))
    expires_ms = (
        now_ms() + int(body.expires_in_hours * 3_600_000) if body.expires_in_hours else None
    )
    link, token = await deps.guests.create(
        event,
        body.label,
        expires_ms=expires_ms,
        max_files=body.max_files,
        max_bytes=body.max_bytes,
    )
    return Reply(_out(link, deps.base_url, token), status=201)


@routes.get(
    "/v1/events/{event_id}/guest-links",
    operation_id="listGuestLinks",
    summary="List an event's guest upload links",
    scope=Scope.EVENTS_WRITE,
    response=GuestLinkList,
    errors=(EVENT_NOT_FOUND,),
)
async def list_guest_links(call: Call) -> GuestLinkList:
    """With what each added so far (never their tokens)."""
    deps = call.deps
    event = await deps.events.get(call.principal, call.path("event_id"))
    links = await deps.guests.of_event(event)
    return GuestLinkList(items=[_out(link, deps.base_url) for link in links])


@routes.delete(
    "/v1/events/{event_id}/guest-links/{link_id}",
    operation_id="revokeGuestLink",
    summary="Revoke a guest upload link",
    scope=Scope.EVENTS_WRITE,
    status=204,
    errors=(EVENT_NOT_FOUND, GUEST_LINK_NOT_FOUND),
)
async def revoke_guest_link(call: Call) -> None:
    """It stops working at once; what it uploaded stays."""
    deps = call.deps
    event = await deps.events.get(call.principal, call.path("event_id"))
    await deps.guests.revoke(event, call.path("link_id"))


@routes.get(
    "/guest",
    operation_id="guestPage",
    summary="The guest upload page",
    scope=None,
    public=True,
    binary=True,
)
async def guest_page(call: Call) -> web.StreamResponse:
    """The page a guest upload link opens (its token follows ``#``): drop photos, see each
    one's progress, resume after a reload."""
    return web.FileResponse(PAGE_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@routes.get(
    "/guest/{asset}",
    operation_id="guestPageAsset",
    summary="A file of the guest upload page",
    scope=None,
    public=True,
    binary=True,
    errors=(errors.PAGE_ASSET_MISSING,),
)
async def guest_asset(call: Call) -> web.StreamResponse:
    """The page's scripts."""
    name = call.path("asset")
    if name not in ASSETS:
        raise errors.PAGE_ASSET_MISSING.error(f"The page has no file {name!r}.")
    if name not in INSTALLED:
        raise errors.PAGE_ASSET_MISSING.error(
            f"{name} is not installed here: `make install` copies it from node_modules."
        )
    return web.FileResponse(PAGE_DIR / name, headers={"Content-Type": ASSETS[name]})

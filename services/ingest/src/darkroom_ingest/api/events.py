"""``/v1/events``: create, list, read, change and archive events."""

from __future__ import annotations

from darkroom_kit.views import EventView

from darkroom_ingest.api.declare import Call, Reply, RouteTable
from darkroom_ingest.errors import (
    EVENT_BOUND_TOKEN,
    EVENT_NOT_FOUND,
    PHOTO_CAP_BELOW_COUNT,
    SLUG_TAKEN,
)
from darkroom_ingest.schemas.events import EventCreate, EventListQuery, EventPage, EventPatch
from darkroom_ingest.tokens import Scope

routes = RouteTable("events")


@routes.post(
    "/v1/events",
    operation_id="createEvent",
    summary="Create an event",
    scope=Scope.EVENTS_WRITE,
    body=EventCreate,
    response=EventView,
    status=201,
    location=True,
    errors=(SLUG_TAKEN, EVENT_BOUND_TOKEN),
)
async def create_event(call: Call, body: EventCreate) -> Reply[EventView]:
    """Create an event with its categories. Its slug is unique: photo URLs carry it. A token
    bound to one event cannot create others."""
    if call.principal.event_id is not None:
        raise EVENT_BOUND_TOKEN.error(
            f"This token is bound to the event {call.principal.event_id}; events are created "
            "with a token bound to none."
        )
    event = await call.deps.events.create(
        body.name,
        body.slug,
        body.photo_cap,
        [c.name for c in body.categories],
        keep_duplicates=bool(body.keep_duplicates),
    )
    return Reply(EventView.of(event), headers={"Location": f"/v1/events/{event.id}"})


@routes.get(
    "/v1/events",
    operation_id="listEvents",
    summary="List events",
    scope=Scope.EVENTS_READ,
    query=EventListQuery,
    response=EventPage,
)
async def list_events(call: Call, query: EventListQuery) -> EventPage:
    """Events, newest first; ``slug=`` finds one by its slug. A gallery token sees its own."""
    events, total = await call.deps.events.page(
        call.principal, query.limit, query.offset, query.slug
    )
    return EventPage(
        items=[await call.deps.gallery.event_view(call.principal, e) for e in events],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )


@routes.get(
    "/v1/events/{event_id}",
    operation_id="getEvent",
    summary="Read an event",
    scope=Scope.EVENTS_READ,
    response=EventView,
    errors=(EVENT_NOT_FOUND,),
)
async def get_event(call: Call) -> EventView:
    """An event, with its photo count and categories."""
    event = await call.deps.events.get(call.principal, call.path("event_id"))
    return await call.deps.gallery.event_view(call.principal, event)


@routes.patch(
    "/v1/events/{event_id}",
    operation_id="updateEvent",
    summary="Change an event's name or photo cap",
    scope=Scope.EVENTS_WRITE,
    body=EventPatch,
    response=EventView,
    errors=(EVENT_NOT_FOUND, PHOTO_CAP_BELOW_COUNT),
)
async def patch_event(call: Call, body: EventPatch) -> EventView:
    """Change the fields sent; a null ``photo_cap`` removes the cap. A cap below the photos the
    event holds is refused (409 photo_cap_below_count)."""
    events = call.deps.events
    event = await events.get(call.principal, call.path("event_id"))
    fields = {name: getattr(body, name) for name in body.model_fields_set}
    return EventView.of(await events.patch(event, fields))


@routes.post(
    "/v1/events/{event_id}/archive",
    operation_id="archiveEvent",
    summary="Archive an event",
    scope=Scope.EVENTS_WRITE,
    response=EventView,
    errors=(EVENT_NOT_FOUND,),
)
async def archive_event(call: Call) -> EventView:
    """No new uploads from now on; its photos stay. ``event.archived`` is sent once, however
    often this is called."""
    events = call.deps.events
    event = await events.get(call.principal, call.path("event_id"))
    return EventView.of(await events.archive(event))

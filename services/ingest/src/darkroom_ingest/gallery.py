"""Photos as a token sees them: listing, reading, changing and deleting, with the visibility
rules of gallery tokens (bound to one event, never shown a hidden photo)."""

from __future__ import annotations

from typing import Any

from darkroom_kit.problems import FieldError
from darkroom_kit.stored.events import EventRecord
from darkroom_kit.stored.photos import PhotoRecord
from darkroom_kit.views import EventView

from darkroom_ingest.errors import PHOTO_NOT_FOUND, UNKNOWN_CATEGORY
from darkroom_ingest.photos import PhotoService
from darkroom_ingest.stores import EventStore
from darkroom_ingest.tokens import Principal


def photo_not_found(ident: str) -> Exception:
    return PHOTO_NOT_FOUND.error(f"No photo with id {ident!r}.")


def visible(principal: Principal, photo: PhotoRecord) -> bool:
    """A gallery token (bound to one event) sees that event's photos, never hidden ones."""
    if principal.event_id is None:
        return True
    return photo.event_id == principal.event_id and not photo.is_hidden


def unknown_category(field: str) -> Exception:
    return UNKNOWN_CATEGORY.error(
        errors=[FieldError(field, "not one of the event's category ids", "unknown_category")]
    )


class Gallery:
    def __init__(self, photos: PhotoService, events: EventStore) -> None:
        self.photos = photos
        self._events = events

    async def event_view(self, principal: Principal, event: EventRecord) -> EventView:
        """The event as ``principal`` sees it: a gallery token counts only what it may see."""
        view = EventView.of(event)
        if principal.event_id is None:
            return view
        return view.model_copy(
            update={"photo_count": await self.photos.photos.count_shown(event.id)}
        )

    async def page(
        self,
        principal: Principal,
        event: EventRecord,
        limit: int,
        offset: int,
        *,
        category_id: str | None,
        is_hidden: bool | None,
        sort: str,
    ) -> tuple[list[PhotoRecord], int]:
        if principal.event_id is not None:
            if is_hidden:  # a gallery token never sees hidden photos
                return [], 0
            is_hidden = False
        docs, total = await self.photos.photos.page(
            event.id, limit, offset, category_id=category_id, is_hidden=is_hidden, sort=sort
        )
        return [PhotoRecord.of(d) for d in docs], total

    async def get(self, principal: Principal, photo_id: str) -> PhotoRecord:
        photo = PhotoRecord.maybe(await self.photos.photos.get(photo_id))
        if photo is None or not visible(principal, photo):
            raise photo_not_found(photo_id)
        return photo

    async def by_name(self, principal: Principal, event: EventRecord, filename: str) -> PhotoRecord:
        photo = PhotoRecord.maybe(await self.photos.photos.by_name(event.id, filename))
        if photo is None or not visible(principal, photo):
            raise photo_not_found(f"{event.slug}/{filename}")
        return photo

    async def patch(self, photo: PhotoRecord, fields: dict[str, Any]) -> PhotoRecord:
        """Only the fields given change; an explicit null clears one."""
        category_id = fields.get("category_id")
        if category_id is not None:
            event = EventRecord.maybe(await self._events.get(photo.event_id))
            if event is None or category_id not in event.category_ids():
                raise unknown_category("/category_id")
        if "is_hidden" in fields and fields["is_hidden"] is None:
            fields["is_hidden"] = False
        if "keywords" in fields and fields["keywords"] is None:
            fields["keywords"] = []
        if not fields:
            return photo
        updated = PhotoRecord.maybe(await self.photos.photos.patch(photo.id, fields))
        if updated is None:
            raise photo_not_found(photo.id)
        if fields.get("is_hidden"):
            # After the photo's write, so an archive read before it is one that may hold it; on
            # every hide, even of a hidden photo: a retry of a hide whose marker was not written
            # (a crash in between) writes it then.
            await self._events.photo_hidden(photo.event_id)
        return updated

    async def delete(self, photo: PhotoRecord) -> None:
        if not await self.photos.delete(photo.document()):
            raise photo_not_found(photo.id)

    async def bulk_delete(
        self, principal: Principal, photo_ids: list[str]
    ) -> tuple[list[str], list[str]]:
        """(deleted, not found) of ``photo_ids``, each once."""
        deleted: list[str] = []
        missing: list[str] = []
        for photo_id in dict.fromkeys(photo_ids):
            photo = PhotoRecord.maybe(await self.photos.photos.get(photo_id))
            if (
                photo is None
                or not visible(principal, photo)
                or not await self.photos.delete(photo.document())
            ):
                missing.append(photo_id)
            else:
                deleted.append(photo_id)
        return deleted, missing

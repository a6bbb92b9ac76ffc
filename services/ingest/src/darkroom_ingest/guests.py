"""Guest upload links: a token that can only add photos to one event (scope ``photos.upload``),
optionally expiring and with its own limits on files and bytes, and the page that uses it
(``{PUBLIC_BASE_URL}/guest#<token>``: the token rides in the fragment, which no request carries,
so it reaches no server log)."""

from __future__ import annotations

from darkroom_kit.mongo import Database
from darkroom_kit.stored.events import EventRecord
from darkroom_kit.stored.tokens import TokenRecord

from darkroom_ingest import errors
from darkroom_ingest.stores import TokenStore
from darkroom_ingest.tokens import Principal, Scope, generate_token, hash_token


def page_url(base_url: str, token: str) -> str:
    return f"{base_url}/guest#{token}"


class GuestLinks:
    def __init__(self, db: Database) -> None:
        self._tokens = TokenStore(db)

    async def create(
        self,
        event: EventRecord,
        label: str,
        *,
        expires_ms: int | None,
        max_files: int | None,
        max_bytes: int | None,
    ) -> tuple[TokenRecord, str]:
        """The link's token record and the token itself (shown once)."""
        token = generate_token()
        record = await self._tokens.create(
            label,
            hash_token(token),
            [Scope.PHOTOS_UPLOAD.value],
            event.id,
            guest=True,
            expires_ms=expires_ms,
            max_files=max_files,
            max_bytes=max_bytes,
        )
        return record, token

    async def of_event(self, event: EventRecord) -> list[TokenRecord]:
        return await self._tokens.guests_of(event.id)

    async def revoke(self, event: EventRecord, link_id: str) -> None:
        link = await self._tokens.get(link_id)
        if link is None or not link.guest or link.event_id != event.id:
            raise errors.GUEST_LINK_NOT_FOUND.error(f"No guest link {link_id!r} in this event.")
        await self._tokens.revoke(link_id)

    async def count_in(self, principal: Principal, size: int, *, files: int = 1) -> None:
        """``files`` more files of ``size`` bytes through a link with limits, or why not.
        Counted once the upload is admitted (what it declares), not given back if it is then
        abandoned."""
        if not principal.limited:
            return
        if not await self._tokens.use(
            principal.token_id, files, size, principal.max_files, principal.max_bytes
        ):
            raise errors.GUEST_LIMIT_REACHED.error(
                "This link has no room left for this file: at most "
                f"{principal.max_files or 'any number of'} files and "
                f"{principal.max_bytes or 'any number of'} bytes in all.",
                extra={"max_files": principal.max_files, "max_bytes": principal.max_bytes},
            )


def arrives_hidden(principal: Principal, event: EventRecord) -> bool:
    """Whether a photo this caller adds is hidden: a guest link's, in an event that hides
    those."""
    return event.guest_uploads_hidden and principal.guest

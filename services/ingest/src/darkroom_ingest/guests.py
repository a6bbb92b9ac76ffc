"""Guest upload links: a token that can only add photos to one event (scope ``photos.upload``),
optionally expiring and with its own limits on files and bytes, and the page that uses it
(``{PUBLIC_BASE_URL}/guest#<token>``: the token rides in the fragment, which no request carries,
so it reaches no server log)."""

from __future__ import annotations

from darkroom_kit.clock import now_ms
from darkroom_kit.mongo import Database
from darkroom_kit.problems import FieldError
from darkroom_kit.stored.events import EventRecord
from darkroom_kit.stored.tokens import TokenRecord

from darkroom_ingest import errors
from darkroom_ingest.stores import TokenStore
from darkroom_ingest.tokens import Principal, Scope, generate_token, hash_token

# Tries of the counting write before a guest's upload is answered "busy": each try fails only
# when another upload of the same link counted itself in between.
_COUNT_TRIES = 20


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
        if expires_ms is not None and expires_ms <= now_ms():
            raise errors.VALIDATION_FAILED.error(
                "A link that has already expired is of no use.",
                errors=[FieldError("/expires_at", "in the past", "too_small")],
            )
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
        Counted when the upload starts (what it declares), not given back if it is then
        abandoned."""
        if not principal.limited:
            return
        for _ in range(_COUNT_TRIES):
            link = await self._tokens.get(principal.token_id)
            if link is None:
                break
            if link.max_files is not None and link.files_used + files > link.max_files:
                raise errors.GUEST_LIMIT_REACHED.error(
                    f"This link takes {link.max_files} files in all.",
                    extra={"max_files": link.max_files},
                )
            if link.max_bytes is not None and link.bytes_used + size > link.max_bytes:
                raise errors.GUEST_LIMIT_REACHED.error(
                    f"This link takes {link.max_bytes} bytes in all; "
                    f"{max(0, link.max_bytes - link.bytes_used)} are left.",
                    extra={"max_bytes": link.max_bytes},
                )
            if await self._tokens.use(link, files, size):
                return
        raise errors.COMPLETE_IN_PROGRESS.error("Many uploads at once through this link; retry.")


def arrives_hidden(principal: Principal, event: EventRecord) -> bool:
    """Whether a photo this caller adds is hidden: a guest's, in an event that hides those."""
    return event.guest_uploads_hidden and principal.is_guest

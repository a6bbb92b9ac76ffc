"""Webhook endpoints: registering, changing, rotating their secret and deleting them.
(Their deliveries are webhook-dispatch's: see ``deliveries``.)"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from darkroom_kit.clock import now_ms
from darkroom_kit.ids import new_id
from darkroom_kit.mongo import Database, Document
from darkroom_kit.problems import FieldError
from darkroom_kit.stored.endpoints import EndpointRecord, StoredSecret

from darkroom_ingest.errors import VALIDATION_FAILED, WEBHOOK_NOT_FOUND
from darkroom_ingest.stores import WebhookStore
from darkroom_ingest.tokens import Principal

# Fields a PATCH may not set to null.
NOT_NULL = ("url", "event_types", "enabled")


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_not_found(endpoint_id: str) -> Exception:
    return WEBHOOK_NOT_FOUND.error(f"No webhook with id {endpoint_id!r}.")


class WebhookEndpoints:
    def __init__(self, db: Database) -> None:
        self.store = WebhookStore(db)

    async def create(
        self, principal: Principal, fields: dict[str, Any]
    ) -> tuple[EndpointRecord, str]:
        """The new endpoint and its signing secret (shown once). A token bound to one event
        makes endpoints of that event only."""
        fields["event_ids"] = _confined(principal, fields.get("event_ids"))
        secret = new_webhook_secret()
        now = now_ms()
        endpoint = EndpointRecord(
            id=new_id("wh"),
            **fields,
            enabled=True,
            created_ms=now,
            secrets=[StoredSecret(secret=secret, created_ms=now)],
        )
        doc = endpoint.document()
        for unset in ("disabled_reason", "disabled_ms"):  # set only when it is disabled
            del doc[unset]
        await self.store.create(doc)
        return endpoint, secret

    async def page(
        self, principal: Principal, limit: int, offset: int
    ) -> tuple[list[EndpointRecord], int]:
        docs, total = await self.store.page(limit, offset, only_event=principal.event_id)
        return [EndpointRecord.of(d) for d in docs], total

    async def get(self, principal: Principal, endpoint_id: str) -> EndpointRecord:
        """An endpoint ``principal`` may manage: a token bound to one event, only those of
        that event alone (others do not exist for it)."""
        endpoint = EndpointRecord.maybe(await self.store.get(endpoint_id))
        if endpoint is None or not _manages(principal, endpoint):
            raise webhook_not_found(endpoint_id)
        return endpoint

    async def delete(self, principal: Principal, endpoint_id: str) -> None:
        await self.get(principal, endpoint_id)
        await self.store.delete(endpoint_id)

    async def patch(
        self, principal: Principal, endpoint_id: str, fields: dict[str, Any]
    ) -> EndpointRecord:
        """Change the fields given. Enabling starts afresh (the auto-disable clock restarts);
        disabling by hand says so."""
        await self.get(principal, endpoint_id)
        if "event_ids" in fields:
            # An explicit null asks for every event: not a default here.
            fields["event_ids"] = _confined(principal, fields["event_ids"], null_is_all=True)
        for name in NOT_NULL:
            if name in fields and fields[name] is None:
                raise VALIDATION_FAILED.error(
                    errors=[FieldError(f"/{name}", "cannot be null", "required")]
                )
        unset: Document = {}
        if fields.get("enabled") is True:
            unset = {"disabled_reason": "", "disabled_ms": ""}
            fields["failing_since_ms"] = None
        elif fields.get("enabled") is False:
            fields["disabled_reason"] = "manual"
            fields["disabled_ms"] = now_ms()
        updated = EndpointRecord.maybe(await self.store.patch(endpoint_id, fields, unset))
        if updated is None:
            raise webhook_not_found(endpoint_id)
        return updated

    async def rotate_secret(
        self, principal: Principal, endpoint_id: str, grace_hours: float
    ) -> tuple[EndpointRecord, str]:
        """A new secret now; the old ones keep signing (a second signature) until the grace
        period ends, never longer than they already would."""
        endpoint = await self.get(principal, endpoint_id)
        now = now_ms()
        grace_ends = now + int(grace_hours * 3600 * 1000)
        kept = [
            s.model_copy(update={"expires_ms": min(s.expires_ms or grace_ends, grace_ends)})
            for s in endpoint.secrets
            if s.valid_at(now)
        ]
        secret = new_webhook_secret()
        rotated = [*kept, StoredSecret(secret=secret, created_ms=now)]
        updated = EndpointRecord.maybe(
            await self.store.patch(endpoint_id, {"secrets": [s.model_dump() for s in rotated]})
        )
        if updated is None:
            raise webhook_not_found(endpoint_id)
        return updated, secret


def _manages(principal: Principal, endpoint: EndpointRecord) -> bool:
    return principal.event_id is None or endpoint.event_ids == [principal.event_id]


def _confined(
    principal: Principal, event_ids: list[str] | None, *, null_is_all: bool = False
) -> list[str] | None:
    """The events an endpoint made or changed by ``principal`` hears about: a token bound to
    one event may not subscribe to any other, nor to every event (``event_ids`` left out of a
    creation means its own event)."""
    bound = principal.event_id
    if bound is None:
        return event_ids
    if event_ids is None and not null_is_all:
        return [bound]
    if event_ids is None or set(event_ids) != {bound}:
        raise VALIDATION_FAILED.error(
            errors=[
                FieldError(
                    "/event_ids",
                    f"a token bound to the event {bound} subscribes to that event only",
                    "event_not_allowed",
                )
            ]
        )
    return [bound]

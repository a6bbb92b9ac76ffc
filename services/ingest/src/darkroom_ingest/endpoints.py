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

# Fields a PATCH may not set to null.
NOT_NULL = ("url", "event_types", "enabled")


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_not_found(endpoint_id: str) -> Exception:
    return WEBHOOK_NOT_FOUND.error(f"No webhook with id {endpoint_id!r}.")


class WebhookEndpoints:
    def __init__(self, db: Database) -> None:
        self.store = WebhookStore(db)

    async def create(self, fields: dict[str, Any]) -> tuple[EndpointRecord, str]:
        """The new endpoint and its signing secret (shown once)."""
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

    async def page(self, limit: int, offset: int) -> tuple[list[EndpointRecord], int]:
        docs, total = await self.store.page(limit, offset)
        return [EndpointRecord.of(d) for d in docs], total

    async def get(self, endpoint_id: str) -> EndpointRecord:
        endpoint = EndpointRecord.maybe(await self.store.get(endpoint_id))
        if endpoint is None:
            raise webhook_not_found(endpoint_id)
        return endpoint

    async def delete(self, endpoint_id: str) -> None:
        await self.get(endpoint_id)
        await self.store.delete(endpoint_id)

    async def patch(self, endpoint_id: str, fields: dict[str, Any]) -> EndpointRecord:
        """Change the fields given. Enabling starts afresh (the auto-disable clock restarts);
        disabling by hand says so."""
        await self.get(endpoint_id)
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
        self, endpoint_id: str, grace_hours: float
    ) -> tuple[EndpointRecord, str]:
        """A new secret now; the old ones keep signing (a second signature) until the grace
        period ends, never longer than they already would."""
        endpoint = await self.get(endpoint_id)
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

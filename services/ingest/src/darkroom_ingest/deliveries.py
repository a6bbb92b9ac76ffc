"""An endpoint's deliveries as upload-ingest sees them: read-only. Resends and test sends are
commands that webhook-dispatch, the deliveries' one writer, carries out; this side publishes
them and waits a moment to answer with what they did."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from darkroom_kit import records
from darkroom_kit.ids import new_id
from darkroom_kit.messaging import Envelope, Publisher, Topology
from darkroom_kit.mongo import Database, Document
from darkroom_kit.statuses import DELIVERY_FINAL
from darkroom_kit.stored.deliveries import DeliveryRecord, DeliveryState

from darkroom_ingest.errors import (
    COMMAND_NOT_SENT,
    DELIVERY_IN_PROGRESS,
    DELIVERY_NOT_FOUND,
)
from darkroom_ingest.stores import NEWEST_FIRST, page_of

log = logging.getLogger(__name__)
# The delivery log never shows the body sent (the receiver has it; it may be large).
WITHOUT_BODY = {"payload": 0}


def delivery_not_found(delivery_id: str) -> Exception:
    return DELIVERY_NOT_FOUND.error(f"No delivery with id {delivery_id!r}.")


async def poll_until(
    fetch: Callable[[], Awaitable[Document | None]],
    done: Callable[[Document], bool],
    wait_seconds: float,
    interval: float = 0.1,
) -> Document | None:
    """Fetch until the record is there and ``done``, or ``wait_seconds`` have passed: the last
    read (None: not there)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        doc = await fetch()
        if (doc is not None and done(doc)) or loop.time() >= deadline:
            return doc
        await asyncio.sleep(interval)


class Deliveries:
    def __init__(
        self,
        db: Database,
        publisher: Publisher,
        topology: Topology,
        *,
        test_wait_seconds: float,
        resend_wait_seconds: float,
    ) -> None:
        self._col = db[records.WEBHOOK_DELIVERIES]
        self._publisher = publisher
        self._topology = topology
        self._test_wait = test_wait_seconds
        self._resend_wait = resend_wait_seconds

    async def page(
        self, endpoint_id: str, limit: int, offset: int, filters: dict[str, Any]
    ) -> tuple[list[DeliveryRecord], int]:
        query = {**filters, "endpoint_id": endpoint_id}
        docs, total = await page_of(self._col, query, WITHOUT_BODY, NEWEST_FIRST, limit, offset)
        return [DeliveryRecord.of(d) for d in docs], total

    async def _find(self, endpoint_id: str, delivery_id: str) -> Document | None:
        return await self._col.find_one(
            {"_id": delivery_id, "endpoint_id": endpoint_id}, WITHOUT_BODY
        )

    async def get(self, endpoint_id: str, delivery_id: str) -> DeliveryRecord:
        doc = await self._find(endpoint_id, delivery_id)
        if doc is None:
            raise delivery_not_found(delivery_id)
        return DeliveryRecord.of(doc)

    async def _command(self, type_: str, delivery_id: str, endpoint_id: str) -> Envelope:
        command = Envelope.new(type_, {"delivery_id": delivery_id, "endpoint_id": endpoint_id})
        try:
            await self._publisher.publish(self._topology.commands, command)
        except Exception:
            # Nothing was changed: the client can simply ask again.
            log.warning("command not published", exc_info=True, extra={"type": type_})
            raise COMMAND_NOT_SENT.error(
                "webhook-dispatch could not be asked; nothing was done. Retry shortly.",
                retry_after=5,
            ) from None
        return command

    async def resend(self, endpoint_id: str, delivery_id: str) -> DeliveryRecord:
        """Send a final delivery again (same webhook-id, fresh retry schedule): the delivery
        once webhook-dispatch has reopened it, or as it is if that takes longer than a moment."""
        current = await self.get(endpoint_id, delivery_id)
        if not current.final:
            raise DELIVERY_IN_PROGRESS.error(
                "A pending delivery is retried on its own schedule; resend it once it is final."
            )
        command = await self._command(records.WEBHOOK_RESEND, delivery_id, endpoint_id)
        doc = await poll_until(
            lambda: self._find(endpoint_id, delivery_id),
            lambda d: DeliveryState.of(d).last_resend_id == command.id,
            self._resend_wait,
        )
        return current if doc is None else DeliveryRecord.of(doc)

    async def send_test(self, endpoint_id: str) -> tuple[Envelope, str, DeliveryRecord | None]:
        """Have webhook-dispatch send a signed ``webhook.test`` now: the command (its id is the
        test message's webhook-id), the delivery's id, and the delivery with its attempt, or
        still pending (None: not made yet, the dispatcher is busy or away) if it takes longer
        than the wait."""
        delivery_id = new_id("msg")
        command = await self._command(records.WEBHOOK_SEND_TEST, delivery_id, endpoint_id)
        doc = await poll_until(
            lambda: self._find(endpoint_id, delivery_id),
            lambda d: DeliveryState.of(d).status in DELIVERY_FINAL,
            self._test_wait,
        )
        return command, delivery_id, None if doc is None else DeliveryRecord.of(doc)

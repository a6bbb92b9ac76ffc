"""Webhook endpoints (collection ``webhook_endpoints``)."""

from __future__ import annotations

from darkroom_kit import records
from darkroom_kit.mongo import Database, Document
from pymongo import ReturnDocument

from darkroom_ingest.stores.common import NEWEST_FIRST, page_of


class WebhookStore:
    def __init__(self, db: Database) -> None:
        self._col = db[records.WEBHOOK_ENDPOINTS]

    async def create(self, doc: Document) -> Document:
        await self._col.insert_one(doc)
        return doc

    async def get(self, endpoint_id: str) -> Document | None:
        return await self._col.find_one({"_id": endpoint_id, "deleted": {"$ne": True}})

    async def page(
        self, limit: int, offset: int, *, only_event: str | None = None
    ) -> tuple[list[Document], int]:
        """``only_event``: the endpoints subscribed to that event alone."""
        query: Document = {"deleted": {"$ne": True}}
        if only_event is not None:
            query["event_ids"] = {"$all": [only_event], "$size": 1}
        return await page_of(self._col, query, None, NEWEST_FIRST, limit, offset)

    async def patch(
        self, endpoint_id: str, fields: Document, unset: Document | None = None
    ) -> Document | None:
        ops: Document = {"$set": fields}
        if unset:
            ops["$unset"] = unset
        return await self._col.find_one_and_update(
            {"_id": endpoint_id}, ops, return_document=ReturnDocument.AFTER
        )

    async def delete(self, endpoint_id: str) -> bool:
        res = await self._col.delete_one({"_id": endpoint_id})
        return res.deleted_count == 1

"""MongoDB lifecycle: one ``AsyncMongoClient`` per process, as a cleanup context."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from darkroom_kit.settings import CommonSettings

Document = dict[str, Any]
Database = AsyncDatabase[Document]
Collection = AsyncCollection[Document]

MONGO_DB: web.AppKey[Database] = web.AppKey("mongo_db", AsyncDatabase)

DUPLICATE_KEY = 11000


async def insert_new(collection: Collection, docs: list[Document]) -> set[int]:
    """Insert every document that does not clash with one already there (one unordered bulk
    insert). Answers the positions of those refused as duplicates; any other error raises."""
    if not docs:
        return set()
    try:
        await collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        return {int(e["index"]) for e in errors}
    return set()


def open_mongo(settings: CommonSettings) -> AsyncMongoClient[Document]:
    # Short server selection: a service that cannot reach MongoDB should say so in seconds, and
    # /readyz stays false until it can.
    return AsyncMongoClient(
        settings.mongo_url,
        serverSelectionTimeoutMS=5000,
        connectTimeoutMS=5000,
        appname="darkroom",
    )


def mongo_ctx(
    settings: CommonSettings,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        client = open_mongo(settings)
        try:
            await client.admin.command("ping")
            app[MONGO_DB] = client[settings.mongo_db]
            yield
        finally:
            await client.close()

    return ctx

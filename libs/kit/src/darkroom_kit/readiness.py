"""The readiness checks of a service's connections, registered as one cleanup context."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from darkroom_kit.httpapp import READY_CHECKS
from darkroom_kit.messaging import AMQP_CONNECTION
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.storage import OBJECT_STORE


async def readiness_ctx(app: web.Application) -> AsyncIterator[None]:
    """Must come after the connection contexts: it checks whichever of them the app has."""

    async def mongo() -> None:
        await app[MONGO_DB].command("ping")

    async def amqp() -> None:
        if app[AMQP_CONNECTION].is_closed:
            raise ConnectionError("AMQP connection is closed")

    async def s3() -> None:
        await app[OBJECT_STORE].ping()

    checks = app[READY_CHECKS]
    if MONGO_DB in app:
        checks.append(mongo)
    if AMQP_CONNECTION in app:
        checks.append(amqp)
    if OBJECT_STORE in app:
        checks.append(s3)
    yield

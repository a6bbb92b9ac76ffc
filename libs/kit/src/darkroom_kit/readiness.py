"""The readiness checks of a service's connections, registered as one cleanup context."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from darkroom_kit.httpapp import READY_CHECKS
from darkroom_kit.messaging import AMQP_CONNECTION, PUBLISHER, TOPOLOGY
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.storage import OBJECT_STORE


async def readiness_ctx(app: web.Application) -> AsyncIterator[None]:
    """Must come after the connection contexts: it checks whichever of them the app has. Each
    check is a round trip (``/readyz`` bounds each with its own timeout): a connection to a
    frozen server, or over a cut network, still looks open."""

    async def mongo() -> None:
        await app[MONGO_DB].command("ping")

    async def amqp() -> None:
        # A robust connection is never "closed" while it reconnects: ask whether it has a
        # transport now, then whether the broker answers on it.
        connection = app[AMQP_CONNECTION]
        transport = connection.transport
        if not connection.connected.is_set() or transport is None or transport.connection.is_closed:
            raise ConnectionError("not connected to the broker (reconnecting)")
        if PUBLISHER in app and not app[PUBLISHER].is_open:
            raise ConnectionError("the publishing channel is closed")
        # A throwaway channel of the underlying connection, not a robust one: it must not be
        # restored after a reconnect, and a failed passive declare closes its channel.
        channel = await transport.connection.channel(publisher_confirms=False)
        try:
            await channel.exchange_declare(app[TOPOLOGY].events, passive=True)
        finally:
            await channel.close()

    async def s3() -> None:
        await app[OBJECT_STORE].ping()

    checks = app[READY_CHECKS]
    if MONGO_DB in app:
        checks["mongo"] = mongo
    if AMQP_CONNECTION in app:
        checks["amqp"] = amqp
    if OBJECT_STORE in app:
        checks["s3"] = s3
    yield

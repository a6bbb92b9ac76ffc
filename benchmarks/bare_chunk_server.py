"""The floor under the chunked upload path, as its own process: ``PUT /{upload_id}/{n}`` with a
raw body is forwarded to S3 as part n of that multipart upload, exactly as upload-ingest forwards
a chunk (a :class:`PartBody` of the pieces as they arrive, the same S3 data path), and nothing
else: no token, no MongoDB, no checksum, no sniffing. Its CPU per GiB next to the API's, in the
same run, says what the API itself adds.

    S3_ENDPOINT_URL=... S3_BUCKET=... python -m benchmarks.bare_chunk_server PORT KEY
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

from aiohttp import web
from darkroom_kit.settings import CommonSettings
from darkroom_kit.storage import PartBody, S3ObjectStore, open_object_store

STORE: web.AppKey[S3ObjectStore] = web.AppKey("store", S3ObjectStore)


def make_app(settings: CommonSettings, key: str) -> web.Application:
    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_object_store(settings) as store:
            app[STORE] = store
            yield

    async def put_part(request: web.Request) -> web.Response:
        part = PartBody()
        async for piece in request.content.iter_any():
            part.append(piece)
        number = int(request.match_info["n"])
        stored = await request.app[STORE].upload_part(
            key, request.match_info["upload_id"], number, part
        )
        return web.json_response({"etag": stored.etag, "size": stored.size})

    app = web.Application()
    app.cleanup_ctx.append(store_ctx)
    app.router.add_put("/{upload_id}/{n}", put_part)
    return app


if __name__ == "__main__":
    web.run_app(
        make_app(CommonSettings(), sys.argv[2]),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        print=None,
    )

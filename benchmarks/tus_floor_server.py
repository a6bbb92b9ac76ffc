"""The floor under any tus server that runs as several replicas, as its own process.

Just enough tus for ``benchmarks.tus_upload``'s client (POST creates, PATCH at the offset), doing
per PATCH the least such a server must: read the body; store it durably as its own S3 object (a
piece: PATCHes under S3's 5 MiB part minimum cannot be parts); record the new offset and the
piece in one conditional MongoDB update (the state every replica reads); and, on the PATCH whose
bytes reach a part, join the pieces (from this process's memory, as on the replica that wrote
them) with its own bytes into one multipart part and delete the pieces. The last PATCH completes
the multipart upload. Nothing else: no token, no lease, no checks, no sniffing, no photo. Its CPU
per GiB next to darkroom's tus, in the same run, says what darkroom adds to the work itself.

    S3_ENDPOINT_URL=... S3_BUCKET=... MONGO_URL=... MONGO_DB=... \
        python -m benchmarks.tus_floor_server PORT PART_BYTES
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from darkroom_kit.mongo import Collection, Document, open_mongo
from darkroom_kit.settings import CommonSettings
from darkroom_kit.storage import PartBody, S3ObjectStore, StoredPart, open_object_store
from pymongo.asynchronous.collection import AsyncCollection

STORE: web.AppKey[S3ObjectStore] = web.AppKey("store", S3ObjectStore)
RECORDS: web.AppKey[Collection] = web.AppKey("records", AsyncCollection)


@dataclass
class Upload:
    key: str
    upload_id: str
    length: int
    offset: int = 0
    tail: int = 0
    pieces: dict[str, list[bytes]] = field(default_factory=dict)
    parts: list[StoredPart] = field(default_factory=list)


def make_app(settings: CommonSettings, part_bytes: int) -> web.Application:
    uploads: dict[str, Upload] = {}

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with open_object_store(settings) as store:
            client = open_mongo(settings)
            app[STORE] = store
            app[RECORDS] = client[settings.mongo_db]["tus_floor_uploads"]
            yield
            await client.close()

    async def create(request: web.Request) -> web.Response:
        uid = secrets.token_hex(8)
        key = f"bench-tus-floor/{uid}"
        upload_id = await request.app[STORE].create_multipart(key, "video/mp4")
        uploads[uid] = Upload(key, upload_id, int(request.headers["Upload-Length"]))
        await request.app[RECORDS].insert_one({"_id": uid, "offset": 0, "piece_keys": []})
        return web.Response(status=201, headers={"Location": uid, "Upload-Offset": "0"})

    async def patch(request: web.Request) -> web.Response:
        store, uid = request.app[STORE], request.match_info["uid"]
        upload = uploads[uid]
        start = int(request.headers["Upload-Offset"])
        if start != upload.offset:
            return web.Response(status=409, headers={"Upload-Offset": str(upload.offset)})
        chunks = [chunk async for chunk in request.content.iter_any()]
        end = start + sum(map(len, chunks))
        fields: Document = {"offset": end}
        if upload.tail + end - start >= part_bytes or end == upload.length:
            # The client's PATCHes divide the part size, so a PATCH never spans two parts.
            body = PartBody()
            for piece in upload.pieces.values():
                for chunk in piece:
                    body.append(chunk)
            for chunk in chunks:
                body.append(chunk)
            number = len(upload.parts) + 1
            upload.parts.append(await store.upload_part(upload.key, upload.upload_id, number, body))
            fields |= {"piece_keys": [], f"parts.{number - 1}": upload.parts[-1].etag}
            if upload.pieces:
                await store.delete_many(list(upload.pieces))
            upload.pieces, upload.tail = {}, 0
        else:
            piece_key = f"bench-tus-floor-pieces/{uid}/{start}"
            body = PartBody()
            for chunk in chunks:
                body.append(chunk)
            await store.put_bytes(piece_key, body, "application/octet-stream")
            upload.pieces[piece_key] = chunks
            upload.tail += end - start
            fields["piece_keys"] = list(upload.pieces)
        recorded = await request.app[RECORDS].update_one(
            {"_id": uid, "offset": start}, {"$set": fields}
        )
        assert recorded.matched_count == 1
        upload.offset = end
        if end == upload.length:
            await store.complete_multipart(upload.key, upload.upload_id, upload.parts)
            await store.delete_many([upload.key])
            await request.app[RECORDS].delete_one({"_id": uid})
            del uploads[uid]
        return web.Response(status=204, headers={"Upload-Offset": str(end)})

    app = web.Application()
    app.cleanup_ctx.append(resources)
    app.router.add_post("/files/", create)
    app.router.add_patch("/files/{uid}", patch)
    return app


if __name__ == "__main__":
    web.run_app(
        make_app(CommonSettings(), int(sys.argv[2])),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        print=None,
        access_log=None,
    )

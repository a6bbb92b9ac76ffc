"""API tokens (collection ``tokens``)."""

from __future__ import annotations

from darkroom_kit import records
from darkroom_kit.clock import now_ms
from darkroom_kit.ids import new_id
from darkroom_kit.mongo import Database, Document
from darkroom_kit.stored.tokens import TokenRecord
from pymongo import ASCENDING


class TokenStore:
    def __init__(self, db: Database) -> None:
        self._col = db[records.TOKENS]

    async def create(
        self,
        name: str,
        token_hash: str,
        scopes: list[str],
        event_id: str | None = None,
        *,
        guest: bool = False,
        expires_ms: int | None = None,
        max_files: int | None = None,
        max_bytes: int | None = None,
    ) -> TokenRecord:
        token = TokenRecord(
            id=new_id("tok"),
            name=name,
            token_hash=token_hash,
            scopes=scopes,
            event_id=event_id,
            created_ms=now_ms(),
            revoked=False,
            guest=guest,
            expires_ms=expires_ms,
            max_files=max_files,
            max_bytes=max_bytes,
        )
        await self._col.insert_one(token.document())
        return token

    async def by_hash(self, token_hash: str) -> TokenRecord | None:
        return TokenRecord.maybe(await self._col.find_one({"hash": token_hash, "revoked": False}))

    async def get(self, token_id: str) -> TokenRecord | None:
        return TokenRecord.maybe(await self._col.find_one({"_id": token_id}, {"hash": 0}))

    async def guests_of(self, event_id: str) -> list[TokenRecord]:
        cursor = self._col.find({"event_id": event_id, "guest": True}, {"hash": 0})
        return [TokenRecord.of(d) async for d in cursor.sort("created_ms", ASCENDING)]

    async def use(
        self, token_id: str, files: int, size: int, max_files: int | None, max_bytes: int | None
    ) -> bool:
        """Count ``files`` and ``size`` bytes against the token's limits, if they leave room:
        one write conditional on the counts so far (racing uploads cannot both take the last
        place)."""
        room: Document = {}
        if max_files is not None:
            room["files_used"] = {"$lte": max_files - files}
        if max_bytes is not None:
            room["bytes_used"] = {"$lte": max_bytes - size}
        result = await self._col.update_one(
            {"_id": token_id, **room}, {"$inc": {"files_used": files, "bytes_used": size}}
        )
        return result.matched_count == 1

    async def list(self) -> list[TokenRecord]:
        cursor = self._col.find({}, {"hash": 0}).sort("created_ms", ASCENDING)
        return [TokenRecord.of(d) async for d in cursor]

    async def revoke(self, token_id: str) -> bool:
        res = await self._col.update_one({"_id": token_id}, {"$set": {"revoked": True}})
        return res.matched_count == 1

"""``/v1/me``: what this token is and may do."""

from __future__ import annotations

from darkroom_kit.clock import ms_to_iso

from darkroom_ingest.api.declare import Call, RouteTable
from darkroom_ingest.schemas.me import MeOut
from darkroom_ingest.tokens import effective_scopes

routes = RouteTable("tokens")


@routes.get(
    "/v1/me", operation_id="getMe", summary="Read the token's own facts", scope=None, response=MeOut
)
async def get_me(call: Call) -> MeOut:
    """What the token of this request is: its name, its scopes (with those they imply) and, for
    a gallery token, the one event it sees."""
    principal = call.principal
    return MeOut(
        id=principal.token_id,
        name=principal.name,
        scopes=principal.scopes,
        effective_scopes=sorted(effective_scopes(principal.scopes)),
        event_id=principal.event_id,
        created_at=ms_to_iso(principal.created_ms) or "",
    )

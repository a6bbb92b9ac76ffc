from __future__ import annotations

import pytest
from darkroom_ingest.tokens import Principal, Scope, generate_token, hash_token, parse_scopes


def test_scopes_parse_and_reject_unknown() -> None:
    assert parse_scopes("photos.read, photos.write,photos.read") == [
        Scope.PHOTOS_READ,
        Scope.PHOTOS_WRITE,
    ]
    with pytest.raises(ValueError, match="unknown scope"):
        parse_scopes("photos.read,root")
    with pytest.raises(ValueError, match="at least one"):
        parse_scopes(" , ")


def test_implied_scopes() -> None:
    writer = Principal("t", "n", ["photos.write"])
    assert writer.may(Scope.PHOTOS_READ)
    assert not writer.may(Scope.WEBHOOKS_MANAGE)
    assert Principal("t", "n", ["admin"]).may(Scope.WEBHOOKS_MANAGE)


def test_tokens_are_random_and_hashed() -> None:
    a, b = generate_token(), generate_token()
    assert a != b
    assert a.startswith("drk_")
    assert len(a) > 40
    assert hash_token(a) != a
    assert len(hash_token(a)) == 64

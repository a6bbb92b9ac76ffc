"""The kit's delivery and endpoint records: one builder, one body encoding, ``_id`` as ``id``."""

from __future__ import annotations

import json

from darkroom_kit.statuses import DeliveryStatus
from darkroom_kit.stored.deliveries import DeliveryRecord, DeliveryState, delivery_body
from darkroom_kit.stored.endpoints import EndpointRecord


def test_a_delivery_is_built_stored_and_read_back() -> None:
    body = delivery_body("msg_0", "photo.uploaded", "2026-01-01T00:00:00.000Z", {"name": "Zoë ✓"})
    # Compact and UTF-8, whoever builds it (a test send used to be \\u-escaped).
    assert "Zoë ✓" in body
    assert ", " not in body
    assert json.loads(body) == {
        "id": "msg_0",
        "type": "photo.uploaded",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "schema_version": 2,
        "data": {"name": "Zoë ✓"},
    }
    new = DeliveryRecord.new(
        delivery_id="msg_1",
        endpoint_id="wh_1",
        message_id="msg_0",
        event_type="photo.uploaded",
        body=body,
        event_ms=5,
        now_ms=7,
    )
    doc = new.to_document()
    assert doc["_id"] == "msg_1"
    assert "id" not in doc
    assert doc["status"] == "pending"
    assert (doc["attempt_count"], doc["lease_until_ms"], doc["attempts"]) == (0, 0, {})
    assert "last_resend_id" not in doc  # named only once a resend set it
    back = DeliveryRecord.from_document(
        {
            **doc,
            "status": "failed",
            "attempt_count": 2,
            "attempts": {
                "10": {"delivery_id": "msg_1", "endpoint_id": "wh_1", "attempt": 10, "at_ms": 3},
                "2": {"delivery_id": "msg_1", "endpoint_id": "wh_1", "attempt": 2, "at_ms": 2},
            },
        }
    )
    assert back.final
    assert back.body == body.encode()
    assert [a.attempt for a in back.attempt_log()] == [2, 10]  # by number, not as text
    state = DeliveryState.of({"_id": "msg_1", "endpoint_id": "wh_1", "status": "pending"})
    assert (state.status, state.final) == (DeliveryStatus.PENDING, False)


def test_an_endpoint_signs_with_its_live_secrets() -> None:
    endpoint = EndpointRecord.from_document(
        {
            "_id": "wh_1",
            "url": "https://x.example/hook",
            "event_types": ["photo.*"],
            "created_ms": 1,
            "secrets": [
                {"secret": "old", "created_ms": 1, "expires_ms": 100},
                {"secret": "new", "created_ms": 2, "expires_ms": None},
            ],
            "extra_field_of_a_newer_version": True,
        }
    )
    assert endpoint.id == "wh_1"
    assert endpoint.signing_secrets(50) == ["old", "new"]
    assert endpoint.signing_secrets(100) == ["new"]
    assert endpoint.unlimited
    assert not endpoint.model_copy(update={"rate_limit": 5}).unlimited

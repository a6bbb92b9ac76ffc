"""Bucket notifications as MinIO publishes them, read (pure: no servers)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from darkroom_ingest.import_notifications import created_objects, decode
from darkroom_kit import records
from darkroom_kit.messaging import Envelope
from darkroom_kit.payloads import BucketNotification
from pydantic import ValidationError


@dataclass
class Delivery:
    body: bytes
    message_id: str | None = None


def minio_body(key: str, event: str = "s3:ObjectCreated:Put") -> dict[str, Any]:
    return {
        "EventName": event,
        "Key": "drop/" + key,
        "Records": [
            {
                "eventVersion": "2.0",
                "eventName": event,
                "s3": {
                    "bucket": {"name": "drop", "arn": "arn:aws:s3:::drop"},
                    # Go's url.QueryEscape of the key.
                    "object": {"key": "a%2Fb+c%2B%C3%BC.jpg", "size": 5, "eTag": "e1"},
                },
            }
        ],
    }


def test_a_minio_notification_becomes_an_envelope_and_its_keys_are_decoded() -> None:
    body = json.dumps(minio_body("a/b c+ü.jpg")).encode()

    envelope = decode(Delivery(body))  # type: ignore[arg-type]

    assert envelope.type == records.BUCKET_NOTIFICATION
    assert envelope.id.startswith("s3n_")
    # A copy of the same body (MinIO replaying its store) has the same id.
    assert decode(Delivery(body)).id == envelope.id  # type: ignore[arg-type]
    note = BucketNotification.model_validate(envelope.data)
    assert created_objects(note) == [("drop", "a/b c+ü.jpg")]
    # A retried one comes back as the envelope the consumer parked.
    again = decode(Delivery(envelope.model_dump_json().encode()))  # type: ignore[arg-type]
    assert again == envelope


def test_other_events_create_nothing() -> None:
    note = BucketNotification.model_validate(minio_body("x.jpg", "s3:ObjectRemoved:Delete"))
    assert created_objects(note) == []


@pytest.mark.parametrize("body", [b"\xff", b"not json", b"[1, 2]", b'"s3"'])
def test_what_is_not_a_json_object_can_never_be_one(body: bytes) -> None:
    with pytest.raises(ValueError, match=r".+"):
        decode(Delivery(body))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [
        {"EventName": "s3:ObjectCreated:Put", "Key": "drop/x", "Records": []},
        {"EventName": "s3:ObjectCreated:Put", "Key": "drop/x"},
        {"Records": [{"s3": {"bucket": {"name": "drop"}, "object": {}}}]},
        {"Records": [{"s3": {"bucket": {"name": "drop"}, "object": {"key": 5}}}]},
    ],
)
def test_a_notification_without_a_bucket_and_key_does_not_validate(data: dict[str, Any]) -> None:
    envelope = decode(Delivery(json.dumps(data).encode()))  # type: ignore[arg-type]
    assert isinstance(envelope, Envelope)
    with pytest.raises(ValidationError):
        BucketNotification.model_validate(envelope.data)

from __future__ import annotations

import base64
import json
import time

import pytest
from darkroom_ingest.endpoints import new_webhook_secret
from darkroom_webhooks.signing import signature_header
from standardwebhooks import Webhook, WebhookVerificationError


def test_reference_verifier_accepts_our_signature() -> None:
    secret = new_webhook_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret[6:])) == 32
    body = json.dumps({"type": "photo.uploaded", "data": {"id": "ph_1"}}).encode()
    ts = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": signature_header([secret], "msg_1", ts, body),
    }
    assert Webhook(secret).verify(body, headers) == {
        "type": "photo.uploaded",
        "data": {"id": "ph_1"},
    }


def test_rotation_carries_both_signatures() -> None:
    old, new = new_webhook_secret(), new_webhook_secret()
    body = b'{"a":1}'
    ts = int(time.time())
    headers = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(ts),
        "webhook-signature": signature_header([old, new], "msg_2", ts, body),
    }
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)


def test_tampered_body_and_old_timestamp_fail() -> None:
    secret = new_webhook_secret()
    ts = int(time.time())
    headers = {
        "webhook-id": "m",
        "webhook-timestamp": str(ts),
        "webhook-signature": signature_header([secret], "m", ts, b"{}"),
    }
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"x":1}', headers)
    old = ts - 600
    stale = {
        **headers,
        "webhook-timestamp": str(old),
        "webhook-signature": signature_header([secret], "m", old, b"{}"),
    }
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b"{}", stale)

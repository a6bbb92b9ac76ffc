"""Standard Webhooks signatures (https://www.standardwebhooks.com)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac

SECRET_PREFIX = "whsec_"


@functools.lru_cache(maxsize=4096)
def _key(secret: str) -> bytes:
    # Decoded once per secret, not once per delivery.
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = _key(secret)
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_header(secrets: list[str], message_id: str, timestamp: int, body: bytes) -> str:
    """One signature per active secret, space-separated (several during a rotation)."""
    return " ".join(sign(s, message_id, timestamp, body) for s in secrets)

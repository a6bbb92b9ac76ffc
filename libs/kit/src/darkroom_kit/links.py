"""Signed media links: URLs to a photo's original or a variant that work without a token.

A link names the photo, the variant and the file name in its path, and its expiry, key id and
flags in its query; an HMAC-SHA256 over all of them (with the key the id names) is its
signature. Keys rotate: links are signed with the first key of ``MEDIA_SIGNING_KEYS`` and
checked with whichever listed key their ``kid`` names, so a new key goes first and the old one
stays listed until the links it signed have expired.

The expiry is rounded up to a window, so one photo asked for twice within a window gets the
same URL (a browser or CDN cache can hit). A link proves only that someone allowed to see the
photo asked for it: serving still reads the photo, so a deleted photo's links stop at once, and
so do a hidden photo's links unless they were signed for a caller allowed to see hidden photos
(the ``h`` flag)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, urlencode

from pydantic import BaseModel, Field, SecretStr

from darkroom_kit.clock import ms_to_iso


class Variant(StrEnum):
    ORIGINAL = "original"
    THUMBNAIL = "thumbnail"
    HERO = "hero"
    # A video's poster frame: its hero-sized still.
    POSTER = "poster"
    # An event's ZIP archive: the "photo id" of its link is the archive Operation's id.
    ARCHIVE = "archive"


# The stored variant a link's variant is served from.
STORED_VARIANT = {Variant.THUMBNAIL: "thumbnail", Variant.HERO: "hero", Variant.POSTER: "hero"}

_EXTENSIONS = {"image/jpeg": ".jpg", "image/webp": ".webp", "image/png": ".png"}
# Variants not rendered yet are named as the default rendering (JPEG) would be.
_DEFAULT_VARIANT_TYPE = "image/jpeg"


class SigningKey(BaseModel):
    """One key of ``MEDIA_SIGNING_KEYS``: an id (in every link it signs) and its secret."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    secret: SecretStr = Field(min_length=16)


class LinkRefused(Exception):
    """A link that proves nothing: tampered, signed with an unknown key, or expired."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class SignedLink:
    """What a valid link grants."""

    photo_id: str
    variant: Variant
    name: str
    expires_s: int
    # Content-Disposition: attachment (a download link).
    attachment: bool
    # Signed for a caller who may see hidden photos.
    hidden_ok: bool


@dataclass(frozen=True, slots=True)
class LinkedPhoto:
    """What a link needs of a photo (from a record, or from a message's photo)."""

    id: str
    filename: str
    is_video: bool
    is_hidden: bool
    variant_types: Mapping[str, str | None]


def variant_name(filename: str, content_type: str | None) -> str:
    """A variant's file name: the photo's stem with the extension of what the variant is."""
    extension = _EXTENSIONS.get(content_type or _DEFAULT_VARIANT_TYPE, ".jpg")
    stem = PurePosixPath(filename).stem or filename
    return f"{stem}{extension}"


# What a link's query values can be (checked before any other work, as ASCII only: a
# non-ASCII signature would make the constant-time comparison raise).
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{43}", re.ASCII)
_EXPIRY = re.compile(r"[0-9]{1,12}", re.ASCII)
_FLAGS = re.compile(r"d?h?", re.ASCII)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _path(photo_id: str, variant: Variant, name: str) -> str:
    return f"/media/{quote(photo_id, safe='')}/{variant.value}/{quote(name, safe='')}"


def _flags(attachment: bool, hidden_ok: bool) -> str:
    return ("d" if attachment else "") + ("h" if hidden_ok else "")


class MediaLinks:
    """Signs and checks media links for one public base URL."""

    def __init__(
        self,
        base_url: str,
        keys: Sequence[SigningKey],
        window_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not keys:
            raise ValueError("at least one media signing key is needed")
        self._base_url = base_url.rstrip("/")
        self._current = keys[0]
        self._keys = {k.id: k.secret.get_secret_value().encode() for k in keys}
        self._window_s = window_s
        self._clock = clock

    def expiry(self, ttl_s: int) -> int:
        """Now plus ``ttl_s``, rounded up to the window (to ``ttl_s`` when it is shorter): valid
        at least ``ttl_s``, the same for every link made within one window."""
        window = max(1, min(self._window_s, ttl_s))
        return math.ceil((self._clock() + ttl_s) / window) * window

    def _signature(
        self, secret: bytes, photo_id: str, variant: str, name: str, expires: int, flags: str
    ) -> str:
        message = f"v1\n{photo_id}\n{variant}\n{name}\n{expires}\n{flags}".encode()
        return _b64(hmac.new(secret, message, hashlib.sha256).digest())

    def sign(
        self,
        photo_id: str,
        variant: Variant,
        name: str,
        ttl_s: int,
        *,
        attachment: bool = False,
        hidden_ok: bool = False,
        expires: int | None = None,
    ) -> tuple[str, int]:
        """(URL, expiry in Unix seconds) of a link: ``ttl_s`` from now, rounded (or at
        ``expires``, so that links made together expire together)."""
        expires = self.expiry(ttl_s) if expires is None else expires
        flags = _flags(attachment, hidden_ok)
        secret = self._keys[self._current.id]
        query: dict[str, Any] = {"exp": expires, "kid": self._current.id}
        if flags:
            query["f"] = flags
        query["sig"] = self._signature(secret, photo_id, variant.value, name, expires, flags)
        return f"{self._base_url}{_path(photo_id, variant, name)}?{urlencode(query)}", expires

    def urls(self, photo: LinkedPhoto, ttl_s: int, *, hidden_ok: bool) -> MediaUrlsView:
        """The links of a photo's original and variants, all expiring together."""
        expires = self.expiry(ttl_s)

        def link(variant: Variant) -> str:
            if variant is Variant.ORIGINAL:
                name = photo.filename
            else:
                name = variant_name(
                    photo.filename, photo.variant_types.get(STORED_VARIANT[variant])
                )
            url, _ = self.sign(photo.id, variant, name, ttl_s, hidden_ok=hidden_ok, expires=expires)
            return url

        return MediaUrlsView(
            original=link(Variant.ORIGINAL),
            thumbnail=link(Variant.THUMBNAIL),
            hero=link(Variant.HERO),
            poster=link(Variant.POSTER) if photo.is_video else None,
            expires_at=ms_to_iso(expires * 1000) or "",
        )

    def check(self, photo_id: str, variant: str, name: str, query: Mapping[str, str]) -> SignedLink:
        """What the link grants; :class:`LinkRefused` when it grants nothing."""
        kid, sig, exp, flags = (query.get(k) for k in ("kid", "sig", "exp", "f"))
        flags = flags or ""
        if (
            not kid
            or sig is None
            or not _SIGNATURE.fullmatch(sig)
            or exp is None
            or not _EXPIRY.fullmatch(exp)
            or not _FLAGS.fullmatch(flags)
        ):
            raise LinkRefused("link_invalid", "The link is incomplete or altered.")
        secret = self._keys.get(kid)
        if secret is None:
            raise LinkRefused("link_invalid", "The link is signed with a key no longer accepted.")
        expected = self._signature(secret, photo_id, variant, name, int(exp), flags)
        if not hmac.compare_digest(expected, sig):
            raise LinkRefused("link_invalid", "The link is incomplete or altered.")
        # Only checked once the signature holds: the variant is then one this code signed.
        chosen = Variant(variant)
        if int(exp) <= self._clock():
            raise LinkRefused("link_expired", "The link has expired; ask for a new one.")
        return SignedLink(
            photo_id, chosen, name, int(exp), attachment="d" in flags, hidden_ok="h" in flags
        )


class MediaUrlsView(BaseModel):
    """Links to the photo's files that work without a token, until ``expires_at``: put them in
    an ``<img src>``, hand them to a CDN or a browser. Each is bound to its photo and file; a
    link stops working at once when the photo is deleted, or hidden (links given to callers who
    may see hidden photos keep working while it is hidden). The same photo asked for twice
    within an hour (the window) gets the same URLs, so caches can hit."""

    original: str = Field(description="The original as uploaded.")
    thumbnail: str = Field(
        description="The thumbnail (400 px on the long edge); 404 thumbnail_processing with "
        "Retry-After until it is made."
    )
    hero: str = Field(description="The hero, a large preview (1600 px on the long edge).")
    poster: str | None = Field(
        default=None, description="A video's poster frame (hero-sized); null for an image."
    )
    expires_at: str = Field(description="When these links stop working (ISO 8601, UTC).")

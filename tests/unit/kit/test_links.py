"""Signed media links: what a link binds, when it expires, how rotation and refusals work, and
where the development key is accepted."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.links import LinkedPhoto, LinkRefused, MediaLinks, SigningKey, Variant
from pydantic import SecretStr, ValidationError

KEY = SigningKey(id="k1", secret=SecretStr("a" * 32))
OTHER = SigningKey(id="k2", secret=SecretStr("b" * 32))


def links(now: float, *keys: SigningKey, window: int = 3600) -> MediaLinks:
    return MediaLinks("https://photos.example.com", list(keys) or [KEY], window, clock=lambda: now)


def parts(url: str) -> tuple[str, str, str, dict[str, str]]:
    split = urlsplit(url)
    _, _, photo_id, variant, name = split.path.split("/")
    query = {k: v[0] for k, v in parse_qs(split.query).items()}
    return photo_id, variant, unquote(name), query


def test_expiry_rounds_up_to_the_window_and_repeats_within_it() -> None:
    start = 36_000.0 + 10  # just after a window began
    first, _ = links(start).sign("ph_1", Variant.HERO, "a.jpg", 4 * 3600)
    later, expires = links(start + 3000).sign("ph_1", Variant.HERO, "a.jpg", 4 * 3600)
    assert first == later
    assert expires % 3600 == 0
    assert start + 3000 + 4 * 3600 <= expires < start + 5 * 3600
    # A lifetime shorter than the window is rounded to itself, not to an hour.
    _, short = links(10_000.0).sign("ph_1", Variant.ORIGINAL, "a.jpg", 120)
    assert 10_000 + 120 <= short < 10_000 + 240


def test_the_links_of_one_photo_expire_together_across_a_window_edge() -> None:
    photo = LinkedPhoto("ph_1", "clip.mp4", True, False, {})
    urls = links(3600 * 10 - 0.001).urls(photo, 3600, hidden_ok=False)
    expiries = {parts(u)[3]["exp"] for u in (urls.original, urls.thumbnail, urls.hero)}
    assert urls.poster is not None
    expiries.add(parts(urls.poster)[3]["exp"])
    assert len(expiries) == 1


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"sig": "é" * 43}, "link_invalid"),
        ({"sig": "x"}, "link_invalid"),
        ({"exp": "²"}, "link_invalid"),
        ({"exp": "1" * 13}, "link_invalid"),
        ({"f": "z"}, "link_invalid"),
        ({"f": "d"}, "link_invalid"),
        ({"kid": "k9"}, "link_invalid"),
        ({"kid": None}, "link_invalid"),
    ],
)
def test_altered_queries_are_refused_never_raised(change: dict[str, str | None], code: str) -> None:
    signer = links(1000.0)
    photo_id, variant, name, query = parts(signer.sign("ph_1", Variant.HERO, "a b%.jpg", 600)[0])
    altered = {k: v for k, v in {**query, **change}.items() if v is not None}
    with pytest.raises(LinkRefused) as refused:
        signer.check(photo_id, variant, name, altered)
    assert refused.value.code == code


def test_a_link_binds_its_photo_variant_and_name() -> None:
    signer = links(1000.0)
    photo_id, variant, name, query = parts(signer.sign("ph_1", Variant.HERO, "a.jpg", 600)[0])
    assert signer.check(photo_id, variant, name, query).variant is Variant.HERO
    for other in (("ph_2", variant, name), (photo_id, "original", name), (photo_id, variant, "b")):
        with pytest.raises(LinkRefused):
            signer.check(*other, query)


def test_expired_and_rotated() -> None:
    photo_id, variant, name, query = parts(links(1000.0).sign("ph_1", Variant.HERO, "a", 600)[0])
    with pytest.raises(LinkRefused) as refused:
        links(1000.0 + 3 * 3600).check(photo_id, variant, name, query)
    assert refused.value.code == "link_expired"
    # Rotated: the new key signs, the old one still checks, until it is removed.
    rotated = links(1000.0, OTHER, KEY)
    assert rotated.check(photo_id, variant, name, query).photo_id == "ph_1"
    assert parts(rotated.sign("ph_1", Variant.HERO, "a", 600)[0])[3]["kid"] == "k2"
    with pytest.raises(LinkRefused):
        links(1000.0, OTHER).check(photo_id, variant, name, query)


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", ""]
)
def test_the_development_key_works_on_loopback(base_url: str) -> None:
    assert IngestSettings(public_base_url=base_url).media_signing_keys[0].id == "dev"


@pytest.mark.parametrize(
    "base_url", ["https://photos.example.com", "https://127.evil.example", "http://10.0.0.5"]
)
def test_the_development_key_is_refused_where_others_reach(base_url: str) -> None:
    with pytest.raises(ValidationError, match="MEDIA_SIGNING_KEYS"):
        IngestSettings(public_base_url=base_url)
    with pytest.raises(ValidationError, match="MEDIA_SIGNING_KEYS"):  # its secret under another id
        IngestSettings(
            public_base_url=base_url,
            media_signing_keys=[{"id": "mine", "secret": "darkroom-development-media-key"}],
        )
    assert IngestSettings(public_base_url=base_url, media_signing_keys=[KEY])

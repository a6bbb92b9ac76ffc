"""The webhook event catalogue: one entry per type an endpoint receives, and each entry's schema
accepts the messages darkroom's producers really send (built the way they build them, wrapped the
way webhook-dispatch wraps them) and refuses what a receiver must not be promised."""

from __future__ import annotations

import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from darkroom_kit import catalogue, records
from darkroom_kit.clock import ms_to_iso, now_ms
from darkroom_kit.links import MediaLinks, SigningKey
from darkroom_kit.messaging import Envelope
from darkroom_kit.payloads import PAYLOADS
from darkroom_kit.stored.deliveries import delivery_body
from darkroom_webhooks.delivery import public_body
from jsonschema.validators import validator_for  # type: ignore[import-untyped]
from pydantic import SecretStr
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

BASE_URL = "https://photos.example.com"
LINKS = MediaLinks(BASE_URL, [SigningKey(id="k1", secret=SecretStr("s" * 32))], 3600)


def stored_photo(**changes: Any) -> dict[str, Any]:
    """A photo record as upload-ingest writes it (PhotoService.store)."""
    doc: dict[str, Any] = {
        "_id": "pho_01hzzzzzzzzzzzzzzzzzzzzzzz",
        "event_id": "evt_01hzzzzzzzzzzzzzzzzzzzzzzz",
        "event_slug": "summer-wedding",
        "filename": "IMG 0001.jpg",
        "original_filename": "IMG 0001.jpg",
        "content_type": "image/jpeg",
        "kind": "image",
        "size": 123_456,
        "sha256": "ab" * 32,
        "original_key": "events/evt_01hzzzzzzzzzzzzzzzzzzzzzzz/originals/pho_01hzzzzzzzzzzzzzzzzz",
        "category_id": None,
        "status": "uploaded",
        "status_reason": None,
        "width": None,
        "height": None,
        "captured_at_ms": None,
        "variants": {},
        "created_ms": 1_767_000_000_000,
        "reservation_id": "res_1",
    }
    doc.update(changes)
    return doc


def producer_data() -> dict[str, dict[str, Any]]:
    """The data of each type as its producer builds it (see the comment of each)."""
    uploaded = stored_photo()
    variants = {
        "thumbnail": {
            "key": "events/e/thumbnail/p.jpg",
            "size": 9_000,
            "width": 400,
            "height": 300,
        },
        "hero": {"key": "events/e/hero/p.jpg", "size": 90_000, "width": 1600, "height": 1200},
    }
    processed = stored_photo(
        status="processed",
        width=4000,
        height=3000,
        captured_at_ms=1_766_000_000_000,
        variants=variants,
    )
    endpoint = {
        "id": "whe_01hzzzzzzzzzzzzzzzzzzzzzzz",
        "url": "https://receiver.example.com/hooks",
        "description": "ops",
    }
    return {
        # PhotoService.store
        records.PHOTO_UPLOADED: {"photo": records.photo_public(uploaded, BASE_URL)},
        # Thumbnailer.handle
        records.PHOTO_PROCESSED: {
            "photo": records.photo_public(processed, BASE_URL),
            "variants": {
                k: {n: v[n] for n in ("size", "width", "height")} for k, v in variants.items()
            },
        },
        # PhotoService.delete
        records.PHOTO_DELETED: {"photo": records.photo_public(processed, BASE_URL)},
        # Repairer
        records.PHOTO_REPAIRED: {
            "photo": records.photo_public(processed, BASE_URL),
            "repaired_fields": ["height", "width"],
        },
        # handlers.archive_event: the API's event, archived
        records.EVENT_ARCHIVED: {
            "event": {
                "id": "evt_01hzzzzzzzzzzzzzzzzzzzzzzz",
                "name": "Summer wedding",
                "slug": "summer-wedding",
                "photo_cap": None,
                "photo_count": 12,
                "categories": [{"id": "cat_1", "name": "Ceremony"}],
                "status": "archived",
                "created_at": ms_to_iso(1_767_000_000_000),
            }
        },
        # Dispatcher's health notices
        records.ENDPOINT_FAILING: {
            "endpoint": {
                **endpoint,
                "enabled": True,
                "failing_since": ms_to_iso(now_ms()),
                "disabled_reason": None,
            }
        },
        records.ENDPOINT_DISABLED: {
            "endpoint": {
                **endpoint,
                "enabled": False,
                "failing_since": ms_to_iso(now_ms()),
                "disabled_reason": "gone_410",
            }
        },
        records.ENDPOINT_RECOVERED: {
            "endpoint": {
                **endpoint,
                "enabled": True,
                "failing_since": None,
                "disabled_reason": None,
            }
        },
        # handlers.send_test_message
        records.WEBHOOK_TEST: {"endpoint": {"id": endpoint["id"], "url": endpoint["url"]}},
    }


def as_posted(type_: str, data: dict[str, Any]) -> Any:
    """The body webhook-dispatch POSTs for an envelope (Dispatcher.fan_out), parsed back."""
    envelope = Envelope.new(type_, data)
    if type_ == records.WEBHOOK_TEST:  # Dispatcher.send_test
        return json.loads(delivery_body(envelope.id, type_, envelope.time, data))
    payload = PAYLOADS[type_].model_validate(data)
    return json.loads(public_body(envelope, payload, LINKS, 3600))


def validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_every_type_an_endpoint_receives_has_an_entry() -> None:
    types = catalogue.event_types()
    names = [e.type for e in types]
    assert names == [*records.PUBLIC_EVENT_TYPES, records.WEBHOOK_TEST]
    for entry in types:
        assert entry.description.strip(), entry.type
        assert entry.subscribable == (entry.type in records.PUBLIC_EVENT_TYPES)
        if entry.subscribable:
            assert entry.payload is PAYLOADS[entry.type]
        schema = entry.schema
        assert schema["properties"]["type"]["const"] == entry.type
        assert set(schema["required"]) == {"id", "type", "timestamp", "schema_version", "data"}


def test_descriptions_come_from_the_payload_models() -> None:
    for entry in catalogue.event_types():
        doc = entry.payload.__doc__ or ""
        # The model's own text, not its type name again.
        assert not entry.description.startswith("`"), entry.description
        first_words = " ".join(entry.description.split()[:3]).rstrip(".,;:").lower()
        assert first_words in " ".join(doc.split()).lower(), (entry.type, entry.description)


def test_each_schema_accepts_what_the_producers_send() -> None:
    data = producer_data()
    for entry in catalogue.event_types():
        message = as_posted(entry.type, data[entry.type])
        # What a consumer accepts ...
        entry.payload.model_validate(message["data"])
        entry.message.model_validate(message)
        # ... the published schema promises.
        errors = [e.message for e in validator(entry.schema).iter_errors(message)]
        assert errors == [], (entry.type, errors)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda m: m.update(type="photo.processed"), "another type"),
        (lambda m: m.pop("timestamp"), "no timestamp"),
        (lambda m: m.update(timestamp="yesterday"), "not a date-time"),
        (lambda m: m.pop("data"), "no data"),
        (lambda m: m["data"].pop("photo"), "no photo"),
        (lambda m: m["data"]["photo"].pop("id"), "a photo without id"),
        (lambda m: m["data"]["photo"].update(size="12"), "a size that is a string"),
    ],
)
def test_the_schema_refuses_what_no_producer_sends(change: Any, why: str) -> None:
    entry = next(e for e in catalogue.event_types() if e.type == records.PHOTO_UPLOADED)
    message = as_posted(entry.type, producer_data()[entry.type])
    change(message)
    assert list(validator(entry.schema).iter_errors(message)), why


def test_schemas_are_copies() -> None:
    first = catalogue.event_types()[0]
    first.schema["properties"].clear()
    assert catalogue.event_types()[0].schema["properties"], "the catalogue was changed"


def test_openapi_webhooks_refer_only_to_the_schemas_they_bring() -> None:
    webhooks, schemas = catalogue.openapi_webhooks()
    assert set(webhooks) == {e.type for e in catalogue.event_types()}
    document = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "webhooks": webhooks,
        "components": {"schemas": schemas},
    }
    for name, item in webhooks.items():
        post = item["post"]
        headers = {p["name"] for p in post["parameters"] if p["in"] == "header"}
        assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}, name
        assert any(code.startswith("2") for code in post["responses"]), name
        body = post["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].startswith("#/components/schemas/"), name
    # Every $ref in the section and its schemas resolves within the document.
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_openapi_webhook_bodies_accept_the_producers_messages() -> None:
    """The OpenAPI flavour (refs into components) says the same as the catalogue's schemas."""
    webhooks, schemas = catalogue.openapi_webhooks(ref_template="urn:darkroom:{model}")
    registry: Registry[Any] = Registry().with_resources(
        (f"urn:darkroom:{name}", Resource.from_contents(s, default_specification=DRAFT202012))
        for name, s in schemas.items()
    )
    data = producer_data()
    for name, item in webhooks.items():
        schema = item["post"]["requestBody"]["content"]["application/json"]["schema"]
        message = as_posted(name, data[name])
        check = jsonschema.Draft202012Validator(
            schema, registry=registry, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        assert [e.message for e in check.iter_errors(message)] == [], name
        wrong = {**message, "type": "not." + name}
        assert list(check.iter_errors(wrong)), name


def test_what_is_posted_holds_no_storage_key_even_from_an_older_producer() -> None:
    """A message written by an earlier version (still in an outbox) carried storage keys: the
    receiver gets only what the catalogue documents, with links to the photo."""
    data = producer_data()
    older = {
        records.PHOTO_UPLOADED: {
            **data[records.PHOTO_UPLOADED],
            "original_key": "events/e/originals/p",
        },
        records.PHOTO_PROCESSED: {
            **data[records.PHOTO_PROCESSED],
            "variants": {"thumbnail": {"key": "events/e/thumbnail/p.jpg", "size": 9_000}},
        },
    }
    for type_, message_data in older.items():
        posted = as_posted(type_, message_data)
        text = json.dumps(posted)
        assert "events/e/" not in text, text
        assert '"key"' not in text, text
        assert "original_key" not in text
        urls = posted["data"]["photo"]["urls"]
        assert urls["thumbnail"].startswith(f"{BASE_URL}/media/pho_01hzzzzzzzzzzzzzzzzzzzzzzz/")
        assert "/thumbnail/IMG%200001.jpg?" in urls["thumbnail"]
        assert posted["schema_version"] == 2
        assert posted["id"].startswith("msg_")


def test_a_video_is_posted_with_a_poster_and_jpeg_variant_names() -> None:
    video = stored_photo(filename="clip.mp4", content_type="video/mp4", kind="video")
    posted = as_posted(records.PHOTO_UPLOADED, {"photo": records.photo_public(video, BASE_URL)})
    urls = posted["data"]["photo"]["urls"]
    assert "/original/clip.mp4?" in urls["original"]
    for name in ("thumbnail", "hero", "poster"):
        assert f"/{name}/clip.jpg?" in urls[name], urls
    assert posted["data"]["photo"]["thumbnail_url"].endswith("/clip.mp4.jpg")


def test_a_deleted_photo_is_posted_without_links() -> None:
    posted = as_posted(records.PHOTO_DELETED, producer_data()[records.PHOTO_DELETED])
    assert posted["data"]["photo"]["urls"] is None

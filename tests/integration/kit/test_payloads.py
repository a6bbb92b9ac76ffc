"""Message payload models: they accept what darkroom's own producers send and refuse junk, and
every consumer dead-letters a message whose data does not validate, before its handler runs."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from darkroom_kit import records
from darkroom_kit.ids import new_id
from darkroom_kit.messaging import Envelope, QueueSpec, Topology
from darkroom_kit.mongo import MONGO_DB
from darkroom_kit.payloads import (
    PAYLOADS,
    Event,
    Photo,
    PhotoUploaded,
    RepairRequested,
    payloads_for,
)
from darkroom_kit.views import EventView, PhotoView
from darkroom_repair.app import REPAIRER
from darkroom_repair.app import create_app as create_repair
from darkroom_repair.app import queue_spec as repair_spec
from darkroom_repair.app import queue_specs as repair_specs
from darkroom_repair.settings import RepairSettings
from darkroom_thumbnailing.app import create_app as create_thumbnailing
from darkroom_thumbnailing.app import queue_spec as thumbnailing_spec
from darkroom_thumbnailing.settings import ThumbnailSettings
from darkroom_webhooks.app import attempts_spec, fanout_spec, queue_specs
from darkroom_webhooks.settings import WebhookSettings
from pydantic import BaseModel, ValidationError
from standardwebhooks import Webhook

from tests.factories.api import (
    Client,
    TokenMaker,
    auth,
    form,
    make_event,
    upload_with_lost_dimensions,
)
from tests.factories.media import jpeg_bytes
from tests.factories.messaging import drain, eventually, publish
from tests.factories.servers import QueueJanitor
from tests.factories.webhooks import Serve, StartDispatch, consumed, register, upload_one

BASE = "https://photos.example"
COMMANDS = (
    records.REPAIR_REQUESTED,
    records.ARCHIVE_REQUESTED,
    records.WEBHOOK_ATTEMPT,
    records.WEBHOOK_RECOVER,
    records.WEBHOOK_RESEND,
    records.WEBHOOK_SEND_TEST,
)


def photo_doc(**fields: Any) -> dict[str, Any]:
    """A photo record as upload-ingest's commit_batch writes it."""
    doc: dict[str, Any] = {
        "_id": new_id("ph"),
        "event_id": "ev_1",
        "event_slug": "wedding",
        "filename": "a b.jpg",
        "original_filename": "a b.jpg",
        "content_type": "image/jpeg",
        "kind": "image",
        "size": 1234,
        "sha256": "ab" * 32,
        "original_key": "events/ev_1/originals/ph_1",
        "category_id": None,
        "status": "uploaded",
        "status_reason": None,
        "width": None,
        "height": None,
        "captured_at_ms": None,
        "variants": {},
        "created_ms": 1_700_000_000_000,
    }
    doc.update(fields)
    return doc


def validate(type_: str, data: dict[str, Any]) -> BaseModel:
    return PAYLOADS[type_].model_validate(data)


# ---- the catalogue -------------------------------------------------------------------------


def test_every_message_type_has_a_model_and_every_consumer_its_models() -> None:
    assert set(PAYLOADS) == {*records.PUBLIC_EVENT_TYPES, *COMMANDS}
    topology = Topology("ns")
    webhook_settings = WebhookSettings()
    specs = [
        thumbnailing_spec(topology, ThumbnailSettings()),
        *repair_specs(topology),
        *queue_specs(topology, webhook_settings),
    ]
    for spec in specs:  # what consumer_ctx does at start: a type without a model fails there
        assert set(payloads_for(spec.routing_keys)) == set(spec.routing_keys)
    with pytest.raises(KeyError):
        payloads_for(["photo.*"])


def test_models_describe_every_field() -> None:
    """The AsyncAPI document and the event-type catalogue are to be generated from them."""
    for type_, model in PAYLOADS.items():
        assert model.__doc__, type_
        schema = model.model_json_schema()
        for name, definition in [
            *schema["properties"].items(),
            *(
                (f"{d}.{p}", v)
                for d, sub in schema.get("$defs", {}).items()
                for p, v in sub.get("properties", {}).items()
            ),
        ]:
            assert definition.get("description"), f"{type_}: {name}"


@pytest.mark.parametrize(
    ("ours", "api"),
    [
        (Photo, PhotoView),
        (Event, EventView),
    ],
)
def test_public_parts_have_the_api_models_fields(
    ours: type[BaseModel], api: type[BaseModel]
) -> None:
    # The same photo and event as the API answers and documents: one view each.
    assert set(ours.model_fields) == set(api.model_fields)


# ---- what the producers send ---------------------------------------------------------------


def test_public_events_from_the_producers_functions() -> None:
    doc = photo_doc()
    uploaded = {"photo": records.photo_public(doc, BASE), "original_key": doc["original_key"]}
    model = validate(records.PHOTO_UPLOADED, uploaded)
    assert isinstance(model, PhotoUploaded)
    assert model.photo.id == doc["_id"]
    # Processed (thumbnailing's $set), a video with its duration, then repaired and deleted.
    variants = {
        name: {
            "key": f"events/ev_1/{name}/x.jpg",
            "etag": "e",
            "size": 99,
            "width": 40,
            "height": 30,
            "content_type": "image/jpeg",
        }
        for name in ("thumbnail", "hero")
    }
    processed = photo_doc(
        kind="video",
        content_type="video/mp4",
        width=40,
        height=30,
        captured_at_ms=1,
        duration_ms=2500,
        variants=variants,
        status="processed",
        title="t",
        rating=5,
        keywords=["k"],
        is_hidden=True,
        download_count=3,
    )
    validate(
        records.PHOTO_PROCESSED,
        {
            "photo": records.photo_public(processed, BASE),
            "variants": {k: {"key": v["key"], "size": v["size"]} for k, v in variants.items()},
        },
    )
    validate(
        records.PHOTO_REPAIRED,
        {"photo": records.photo_public(processed, BASE), "repaired_fields": ["height", "width"]},
    )
    validate(records.PHOTO_DELETED, {"photo": records.photo_public(processed, BASE)})
    # A message written before the later public fields existed (still in an outbox) passes.
    old = records.photo_public(doc, BASE)
    for later in (
        "duration_ms",
        "title",
        "description",
        "rating",
        "keywords",
        "is_hidden",
        "feedback",
        "download_count",
    ):
        del old[later]
    validate(records.PHOTO_UPLOADED, {"photo": old})
    validate(records.PHOTO_UPLOADED, {"photo": {"id": "ph_1"}})  # as tools and tests announce
    # A field added later still (a newer producer in a rolling deploy) is kept, not refused.
    newer = validate(records.PHOTO_DELETED, {"photo": {**old, "colour": "red"}, "why": "x"})
    assert newer.model_dump()["photo"]["colour"] == "red"
    endpoint = {
        "id": "wh_1",
        "url": "https://hooks.example/x",
        "description": None,
        "enabled": False,
        "failing_since": "2026-01-01T00:00:00.000Z",
        "disabled_reason": "gone",
    }
    for notice in records.ENDPOINT_NOTICES:
        validate(notice, {"endpoint": endpoint})


def test_commands_from_the_producers() -> None:
    validate(records.WEBHOOK_ATTEMPT, records.attempt_data("msg_1", "wh_1"))
    for command in (records.WEBHOOK_RESEND, records.WEBHOOK_SEND_TEST):
        validate(command, {"delivery_id": "msg_1", "endpoint_id": "wh_1"})
    validate(records.WEBHOOK_RECOVER, {"operation_id": new_id("op")})
    # upload-ingest's repair operation (event_id null: every event), its sweep, a plain one.
    for data in (
        {"operation_id": new_id("op"), "event_id": None, "include_capture_date": False},
        {"operation_id": new_id("op"), "event_id": "ev_1", "include_capture_date": True},
        {"sweep": True},
        {"event_id": "ev_1"},
    ):
        validate(records.REPAIR_REQUESTED, data)


@pytest.mark.parametrize("type_", sorted(PAYLOADS))
def test_junk_is_refused_for_every_type(type_: str) -> None:
    for junk in ({"nonsense": True}, {}):
        with pytest.raises(ValidationError):
            validate(type_, junk)


@pytest.mark.parametrize(
    ("type_", "data"),
    [
        (records.WEBHOOK_ATTEMPT, {"delivery_id": 42, "endpoint_id": "wh_1"}),
        (records.WEBHOOK_ATTEMPT, {"delivery_id": "", "endpoint_id": "wh_1"}),
        # From before attempt commands named their endpoint: dead-lettered now.
        (records.WEBHOOK_ATTEMPT, {"delivery_id": "msg_1"}),
        (records.WEBHOOK_RESEND, {"delivery_id": "msg_1"}),
        (records.WEBHOOK_SEND_TEST, {"endpoint_id": "wh_1"}),
        (records.WEBHOOK_SEND_TEST, {"delivery_id": 1, "endpoint_id": "wh_1"}),
        (records.WEBHOOK_RECOVER, {"operation_id": None}),
        (records.PHOTO_UPLOADED, {"photo": {"id": 7}}),
        (records.PHOTO_UPLOADED, {"photo": {"id": "ph_1", "kind": "song"}}),
        (records.PHOTO_PROCESSED, {"photo": {"id": "ph_1"}}),
        (records.EVENT_ARCHIVED, {"event": {"name": "no id"}}),
        (records.ENDPOINT_DISABLED, {"endpoint": {"id": "wh_1", "enabled": "no"}}),
        (records.PHOTO_DELETED, {"photo": "ph_1"}),
        # A repair's scope is never implied: none of these is "repair everything".
        (records.REPAIR_REQUESTED, {"include_capture_date": True}),
        (records.REPAIR_REQUESTED, {"event_id": None}),
        (records.REPAIR_REQUESTED, {"operation_id": "op_1"}),
        (records.REPAIR_REQUESTED, {"event_id": "ev_1", "photo_ids": ["ph_1"]}),
        (records.REPAIR_REQUESTED, {"sweep": True, "event_id": "ev_1"}),
        (records.REPAIR_REQUESTED, {"sweep": "yes"}),
        (records.REPAIR_REQUESTED, {"event_id": "ev_1", "include_capture_date": "false"}),
    ],
)
def test_malformed_data_is_refused(type_: str, data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate(type_, data)


def test_size_types_are_not_coerced() -> None:
    photo = records.photo_public(photo_doc(), BASE)
    with pytest.raises(ValidationError):
        validate(records.PHOTO_UPLOADED, {"photo": {**photo, "size": "1234"}})
    with pytest.raises(ValidationError):
        RepairRequested.model_validate({"event_id": "ev_1", "include_capture_date": 1})


async def test_real_producer_output_validates(
    api: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
    watch_events: QueueSpec,
) -> None:
    """Every public event upload-ingest, thumbnailing and metadata-repair publish, read off the
    broker, is valid for its model."""
    thumbnail_settings = ThumbnailSettings(**settings_kwargs, render_processes=1)
    topology = Topology(thumbnail_settings.amqp_namespace)
    janitor.add(thumbnailing_spec(topology, thumbnail_settings), *repair_specs(topology))
    janitor.stop_first(await aiohttp_client(create_thumbnailing(thumbnail_settings)))
    repair = await aiohttp_client(create_repair(RepairSettings(**settings_kwargs)))
    janitor.stop_first(repair)
    token = await make_token()
    event = await make_event(api, token)
    files = form(("a.jpg", jpeg_bytes(64, 48)))
    resp = await api.post(f"/v1/events/{event['id']}/photos", data=files, headers=auth(token))
    [photo] = (await resp.json())["uploaded"]

    async def processed() -> bool:
        got = await (await api.get(f"/v1/photos/{photo['id']}", headers=auth(token))).json()
        return bool(got["status"] == "processed")

    await eventually(processed)
    photos = api.app[MONGO_DB][records.PHOTOS]
    await photos.update_one({"_id": photo["id"]}, {"$set": {"width": None, "height": None}})
    result = await repair.app[REPAIRER].run(event["id"], False, owner="test")
    assert result.repaired == 1
    assert (await api.delete(f"/v1/photos/{photo['id']}", headers=auth(token))).status == 204
    resp = await api.post(f"/v1/events/{event['id']}/archive", headers=auth(token))
    assert resp.status == 200
    messages = await drain(settings_kwargs["amqp_url"], watch_events.name, 5)
    assert sorted(m["type"] for m in messages) == sorted(
        [
            records.PHOTO_UPLOADED,
            records.PHOTO_PROCESSED,
            records.PHOTO_REPAIRED,
            records.PHOTO_DELETED,
            records.EVENT_ARCHIVED,
        ]
    )
    for m in messages:
        validate(m["type"], m["data"])


# ---- consumers dead-letter what does not validate ------------------------------------------


async def dead_ids(amqp_url: str, queue: str, expect: int) -> list[str]:
    """The ids of the messages dead-lettered into ``queue`` (read, not counted: a quorum
    queue's declared message count can lag behind for long)."""
    return sorted(m["id"] for m in await drain(amqp_url, queue, expect, timeout=15))


def logged_reason(caplog: pytest.LogCaptureFixture, queue: str, message_id: str) -> str:
    """The dead-letter log line of one message (it names queue, message id and type)."""
    for r in caplog.records:
        if getattr(r, "queue", None) == queue and getattr(r, "message_id", None) == message_id:
            assert r.levelno >= logging.WARNING
            return r.getMessage()
    raise AssertionError(f"no log line for {message_id} on {queue}")


async def test_fan_out_dead_letters_an_invalid_event_and_sends_nothing(
    api: Client,
    start_dispatch: StartDispatch,
    serve: Serve,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dispatch = await start_dispatch()
    fanout = fanout_spec(Topology(settings_kwargs["amqp_namespace"])).name
    token = await make_token()
    hook, url = await serve([(204, {}, b"")])
    endpoint = await register(api, token, url, ["photo.uploaded"])
    junk = Envelope.new(records.PHOTO_UPLOADED, {"nonsense": True})
    amqp_url = settings_kwargs["amqp_url"]
    await publish(amqp_url, Topology(settings_kwargs["amqp_namespace"]).events, junk)
    event = await upload_one(api, token)  # a valid one right after

    async def delivered_one() -> bool:
        return bool(hook.requests)

    assert await dead_ids(amqp_url, f"{fanout}.dead", 1) == [junk.id]
    await eventually(delivered_one)
    verify = Webhook(endpoint["secret"]).verify
    [(_, headers, body)] = hook.requests  # the valid one, and only that
    delivered = verify(body, headers)
    assert delivered["type"] == records.PHOTO_UPLOADED
    assert delivered["data"]["photo"]["event_id"] == event["id"]
    assert json.loads(body)["data"] != junk.data
    reason = logged_reason(caplog, fanout, junk.id)
    assert "invalid photo.uploaded message" in reason
    assert "photo: Field required" in reason
    metrics = await (await dispatch.get("/metrics")).text()
    assert consumed(metrics, fanout, "invalid") == 1


async def test_a_junk_repair_request_is_dead_lettered_and_repairs_nothing(
    api: Client,
    aiohttp_client: Any,
    settings_kwargs: dict[str, Any],
    make_token: TokenMaker,
    janitor: QueueJanitor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = RepairSettings(**settings_kwargs)
    topology = Topology(settings.amqp_namespace)
    spec = repair_spec(topology)
    janitor.add(spec)
    janitor.stop_first(await aiohttp_client(create_repair(settings)))
    token = await make_token()
    event = await make_event(api, token)
    uploaded = await upload_with_lost_dimensions(
        api, token, event["id"], ("a.jpg", jpeg_bytes(64, 48))
    )
    photos = api.app[MONGO_DB][records.PHOTOS]
    # Read as "every event" before: no operation, no event, so no scope at all.
    junk = [
        Envelope.new(records.REPAIR_REQUESTED, {"nonsense": True}),
        Envelope.new(records.REPAIR_REQUESTED, {"include_capture_date": True}),
    ]
    await publish(settings.amqp_url, topology.commands, *junk)

    assert await dead_ids(settings.amqp_url, spec.dead_queue, 2) == sorted(j.id for j in junk)
    doc = await photos.find_one({"_id": uploaded["a.jpg"]})
    assert doc is not None
    assert doc["width"] is None  # nothing was repaired
    assert "nonsense: Extra inputs are not permitted" in logged_reason(
        caplog, spec.name, junk[0].id
    )
    assert "no scope" in logged_reason(caplog, spec.name, junk[1].id)
    # The same worker repairs it when asked properly: the photo was repairable all along.
    await publish(
        settings.amqp_url,
        topology.commands,
        Envelope.new(records.REPAIR_REQUESTED, {"event_id": event["id"]}),
    )

    async def repaired() -> bool:
        got = await photos.find_one({"_id": uploaded["a.jpg"]})
        return got is not None and got["width"] == 64

    await eventually(repaired)


async def test_a_malformed_attempt_command_is_dead_lettered_at_once(
    start_dispatch: StartDispatch,
    settings_kwargs: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Retries wait a minute: a malformed command that were retried would still be in a tier.
    settings = WebhookSettings(**settings_kwargs, retry_delays_ms=(60_000,))
    await start_dispatch(retry_delays_ms=(60_000,))
    topology = Topology(settings.amqp_namespace)
    spec = attempts_spec(topology, settings)
    malformed = [
        Envelope.new(records.WEBHOOK_ATTEMPT, {"endpoint_id": "wh_nope"}),
        Envelope.new(records.WEBHOOK_ATTEMPT, {"delivery_id": 42, "endpoint_id": "wh_nope"}),
        # From before attempt commands named their endpoint (a retry still waiting in a tier
        # across the upgrade): dead-lettered, said so in the log.
        Envelope.new(records.WEBHOOK_ATTEMPT, {"delivery_id": "msg_old"}),
    ]
    await publish(settings.amqp_url, topology.commands, *malformed)

    dead = await dead_ids(settings.amqp_url, spec.dead_queue, 3)
    assert dead == sorted(m.id for m in malformed)
    for name in spec.all_queue_names():
        if name not in (spec.name, spec.dead_queue):
            assert await drain(settings.amqp_url, name, 1, timeout=0.2) == [], name
    assert "delivery_id: Field required" in logged_reason(caplog, spec.name, malformed[0].id)
    assert "delivery_id: Input should be a valid string" in logged_reason(
        caplog, spec.name, malformed[1].id
    )
    assert "endpoint_id: Field required" in logged_reason(caplog, spec.name, malformed[2].id)

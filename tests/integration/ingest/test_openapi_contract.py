"""The API keeps the contract its OpenAPI document states, checked by tools that trust only the
document: a client generated from the live /openapi.json (openapi-python-client) parses the
answers into the documented models with nothing left over, and a bounded schemathesis run finds
no server error and no status code the document does not list."""

from __future__ import annotations

import asyncio
import base64
import importlib
import inspect
import io
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aio_pika
import aiohttp
import attrs
import pytest
from darkroom_ingest.settings import IngestSettings
from darkroom_kit.messaging import QueueSpec, Topology, declare_consumer_queue

from tests.factories.api import Client, TokenMaker, auth, base_url
from tests.factories.media import png_bytes
from tests.factories.servers import QueueJanitor
from tests.factories.webhooks import Serve, StartDispatch

VENV_BIN = Path(sys.executable).parent
ALL_SCOPES = "photos.read,photos.write,events.read,events.write,webhooks.manage"

# A bound for CI: schemathesis stops a phase of an operation after this many cases, and the
# whole run is cut off after RUN_TIMEOUT_S (a cut-off run fails: the bound must be enough).
MAX_EXAMPLES = 10
RUN_TIMEOUT_S = 90


async def live_document(api: Client) -> dict[str, Any]:
    resp = await api.get("/openapi.json")
    assert resp.status == 200
    document: dict[str, Any] = await resp.json()
    return document


async def run(
    *argv: str, cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """A tool in a subprocess (in ``cwd``, where it may leave files), so this test's event loop
    keeps serving the API meanwhile."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{argv[0]} did not finish within {timeout} s") from None
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


# ---- a generated client ----------------------------------------------------------------------


def snake(name: str) -> str:
    """The module name openapi-python-client gives an operation id or a tag."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return re.sub(r"[^a-zA-Z0-9]+", "_", name).strip("_").lower()


class Generated:
    """The client generated for a document, and its operations found by method and path."""

    def __init__(self, package: ModuleType, document: dict[str, Any]) -> None:
        self.package = package
        self.document = document
        self.models = importlib.import_module(f"{package.__name__}.models")

    def operation(self, method: str, path: str) -> Any:
        op = self.document["paths"][path][method]
        tag = snake(op["tags"][0])
        return importlib.import_module(
            f"{self.package.__name__}.api.{tag}.{snake(op['operationId'])}"
        )

    def body_model(self, method: str, path: str) -> Any:
        """The generated model of an operation's request body (JSON or multipart)."""
        parameter = inspect.signature(self.operation(method, path).asyncio_detailed).parameters
        annotation = parameter["body"].annotation
        name = annotation if isinstance(annotation, str) else annotation.__name__
        return getattr(self.models, name.split(" | ")[0].strip("'\""))


@pytest.fixture
async def generated(api: Client, tmp_path: Path) -> AsyncIterator[Generated]:
    document = await live_document(api)
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(document))
    package = f"darkroom_contract_{uuid.uuid4().hex[:8]}"
    config = tmp_path / "config.json"
    # No post hooks: the generated code is imported, not kept, and needs no formatter on PATH.
    # The serving routes answer any media type (*/*), and tus PATCHes send
    # application/offset+octet-stream: bytes, which the generator reads as such only when told to.
    config.write_text(
        json.dumps(
            {
                "package_name_override": package,
                "post_hooks": [],
                "content_type_overrides": {
                    "*/*": "application/octet-stream",
                    "application/offset+octet-stream": "application/octet-stream",
                },
            }
        )
    )
    code, output = await run(
        str(VENV_BIN / "openapi-python-client"),
        "generate",
        "--path",
        str(spec),
        "--meta",
        "none",
        "--config",
        str(config),
        "--output-path",
        str(tmp_path / package),
        cwd=tmp_path,
        timeout=120,
    )
    assert code == 0, output
    # The generator warns about what it could not turn into code: that is a gap in the document.
    assert "Warning" not in output, output
    sys.path.insert(0, str(tmp_path))
    try:
        yield Generated(importlib.import_module(package), document)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]


def no_undocumented_fields(model: Any, where: str) -> None:
    """Every field of an answer is one the document names, at any depth: a generated model
    keeps the fields its schema does not name in ``additional_properties`` (which, in a model
    of a map, with no properties of its own, hold the map's entries)."""
    if not attrs.has(type(model)):
        return
    declared = [f.name for f in attrs.fields(type(model)) if f.name != "additional_properties"]
    extra = getattr(model, "additional_properties", {})
    if declared:
        assert extra == {}, f"{where}: fields the document does not name: {sorted(extra)}"
        children = {name: getattr(model, name) for name in declared}
    else:
        children = dict(extra)
    for name, value in children.items():
        for item in value if isinstance(value, list) else [value]:
            no_undocumented_fields(item, f"{where}.{name}")


async def test_a_generated_client_speaks_the_api(
    api: Client, make_token: TokenMaker, generated: Generated
) -> None:
    token = await make_token(ALL_SCOPES)
    client_module = importlib.import_module(f"{generated.package.__name__}.client")
    client = client_module.AuthenticatedClient(
        base_url=base_url(api), token=token, raise_on_unexpected_status=True
    )
    async with client:
        me = await generated.operation("get", "/v1/me").asyncio_detailed(client=client)
        assert me.status_code == 200
        no_undocumented_fields(me.parsed, "GET /v1/me")
        assert me.parsed.to_dict() == json.loads(me.content)

        slug = f"contract-{uuid.uuid4().hex[:8]}"
        body = generated.body_model("post", "/v1/events").from_dict(
            {"name": "Contract", "slug": slug}
        )
        created = await generated.operation("post", "/v1/events").asyncio_detailed(
            client=client, body=body
        )
        assert created.status_code == 201, created.content
        event = created.parsed
        no_undocumented_fields(event, "POST /v1/events")
        assert event.slug == slug
        assert event.name == "Contract"
        assert event.to_dict() == json.loads(created.content)

        listed = await generated.operation("get", "/v1/events").asyncio_detailed(client=client)
        assert listed.status_code == 200
        no_undocumented_fields(listed.parsed, "GET /v1/events")
        assert event.id in [e.id for e in listed.parsed.items]

        # The photo goes in by hand (the generated upload has a test of its own, below).
        form = aiohttp.FormData()
        form.add_field("photos", png_bytes(64, 48), filename="contract.png")
        resp = await api.post(f"/v1/events/{event.id}/photos", data=form, headers=auth(token))
        assert resp.status == 201, await resp.text()

        photos = await generated.operation("get", "/v1/events/{event_id}/photos").asyncio_detailed(
            event.id, client=client
        )
        assert photos.status_code == 200
        no_undocumented_fields(photos.parsed, "GET /v1/events/{event_id}/photos")
        [item] = photos.parsed.items
        assert item.filename == "contract.png"
        assert item.event_id == event.id
        assert item.to_dict() == json.loads(photos.content)["items"][0]


async def test_a_generated_client_uploads_a_batch(
    api: Client, make_token: TokenMaker, generated: Generated
) -> None:
    """The multipart batch upload, as the document describes it, from the generated client."""
    token = await make_token(ALL_SCOPES)
    package = generated.package.__name__
    client_module = importlib.import_module(f"{package}.client")
    types_module = importlib.import_module(f"{package}.types")
    client = client_module.AuthenticatedClient(
        base_url=base_url(api), token=token, raise_on_unexpected_status=True
    )
    async with client:
        body = generated.body_model("post", "/v1/events").from_dict(
            {"name": "Contract", "slug": f"contract-{uuid.uuid4().hex[:8]}"}
        )
        created = await generated.operation("post", "/v1/events").asyncio_detailed(
            client=client, body=body
        )
        assert created.status_code == 201, created.content
        event_id = created.parsed.id
        form_model = generated.body_model("post", "/v1/events/{event_id}/photos")
        photo = types_module.File(
            payload=io.BytesIO(png_bytes(64, 48)), file_name="batch.png", mime_type="image/png"
        )
        uploaded = await generated.operation(
            "post", "/v1/events/{event_id}/photos"
        ).asyncio_detailed(event_id, client=client, body=form_model(photos=[photo]))
        assert uploaded.status_code == 201, uploaded.content
        no_undocumented_fields(uploaded.parsed, "POST /v1/events/{event_id}/photos")
        [stored] = uploaded.parsed.uploaded
        assert stored.filename == "batch.png"
        assert stored.event_id == event_id


# ---- schemathesis ----------------------------------------------------------------------------


def failures(report: Path) -> list[str]:
    """One line per distinct failure in schemathesis' NDJSON event stream (the operation, the
    status code it answered, the problem's ``code`` and the check that failed), and one per
    error of the run itself."""
    found: set[str] = set()
    for line in report.read_text().splitlines():
        event = json.loads(line)
        if error := event.get("NonFatalError"):
            value = error.get("value") or {}
            found.add(f"{error.get('label')}: error {value.get('type')}: {value.get('message')}")
        finished = event.get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished["recorder"]
        for case_id, checks in (recorder.get("checks") or {}).items():
            failed = [c for c in checks if c.get("failure_info")]
            if not failed:
                continue
            interactions = recorder.get("interactions") or {}
            response = (interactions.get(case_id) or {}).get("response") or {}
            code = _problem_code(response.get("content"))
            for check in failed:
                title = check["failure_info"]["failure"].get("title", "")
                found.add(
                    f"{recorder['label']} -> {response.get('status_code')} {code} "
                    f"({check['name']}: {title})"
                )
    return sorted(found)


def _problem_code(content: Any) -> str:
    if not isinstance(content, dict) or "$base64" not in content:
        return "-"
    try:
        body = json.loads(base64.b64decode(content["$base64"]))
    except ValueError:
        return "-"
    return str(body.get("code", "-")) if isinstance(body, dict) else "-"


@pytest.fixture
async def commands_routed(ingest_settings: IngestSettings, janitor: QueueJanitor) -> None:
    """A queue bound to every command, as the services' queues are in a deployment: a command
    nobody in this test consumes (repair.requested) is routable, not refused by the broker."""
    topology = Topology(ingest_settings.amqp_namespace)
    spec = QueueSpec(topology.queue("test", "commands"), topology.commands, ("#",), ())
    janitor.add(spec)
    connection = await aio_pika.connect(ingest_settings.amqp_url)
    try:
        await declare_consumer_queue(await connection.channel(), topology, spec, 5)
    finally:
        await connection.close()


async def existing_things(api: Client, token: str, receiver: str) -> dict[str, Any]:
    """An event with a photo, a chunked upload and a webhook endpoint, as path parameters."""
    headers = auth(token)
    resp = await api.post(
        "/v1/events",
        json={"name": "Fuzzed", "slug": f"fuzzed-{uuid.uuid4().hex[:8]}"},
        headers=headers,
    )
    assert resp.status == 201, await resp.text()
    event = await resp.json()
    form = aiohttp.FormData()
    form.add_field("photos", png_bytes(64, 48), filename="fuzzed.png")
    resp = await api.post(f"/v1/events/{event['id']}/photos", data=form, headers=headers)
    assert resp.status == 201, await resp.text()
    [photo] = (await resp.json())["uploaded"]
    resp = await api.post(
        f"/v1/events/{event['id']}/uploads",
        json={"filename": "fuzzed.mp4", "size": 1_000, "mime_type": "video/mp4"},
        headers=headers,
    )
    assert resp.status == 201, await resp.text()
    upload = await resp.json()
    resp = await api.post(
        "/v1/webhooks",
        json={"url": receiver, "event_types": ["*"]},
        headers=headers,
    )
    assert resp.status == 201, await resp.text()
    webhook = await resp.json()
    return {
        "path.event_id": event["id"],
        "path.slug": event["slug"],
        "path.photo_id": photo["id"],
        "path.filename": photo["filename"],
        "path.upload_id": upload["upload_id"],
        "path.webhook_id": webhook["id"],
    }


async def test_schemathesis_finds_no_server_error_and_no_undocumented_status(
    api: Client,
    make_token: TokenMaker,
    tmp_path: Path,
    start_dispatch: StartDispatch,
    serve: Serve,
    commands_routed: None,
) -> None:
    # webhook-dispatch and a receiver that takes everything: a test send is answered at once
    # instead of holding its request for the dispatcher's answer.
    await start_dispatch()
    _, receiver = await serve([(204, {}, b"")])
    token = await make_token(ALL_SCOPES)
    url = base_url(api)
    report = tmp_path / "events.ndjson"
    config = tmp_path / "schemathesis.toml"
    # Path parameters name things that exist, so the cases get past 404 to the operations'
    # own logic (random ids would only ever find nothing). ?wait holds an answer until its
    # Operation finishes, up to 60 s, and no worker runs here to finish one: fuzzed, it would
    # only spend the run's time bound waiting.
    parameters = {**await existing_things(api, token, receiver), "query.wait": 0}
    config.write_text(
        "[parameters]\n"
        + "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in parameters.items())
    )
    # tus PATCHes send bytes as application/offset+octet-stream: schemathesis sends those as it
    # sends any octet stream once told they are one.
    hooks = tmp_path / "hooks.py"
    hooks.write_text(
        "import schemathesis\n"
        'schemathesis.serializer.alias("application/offset+octet-stream", '
        '"application/octet-stream")\n'
    )
    code, output = await run(
        str(VENV_BIN / "st"),
        "--config-file",
        str(config),
        "run",
        f"{url}/openapi.json",
        "--url",
        url,
        "--checks",
        "not_a_server_error,status_code_conformance",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "20261204",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--header",
        f"Authorization: Bearer {token}",
        "--continue-on-failure",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        "--generation-database",
        "none",
        "--no-color",
        cwd=tmp_path,
        timeout=RUN_TIMEOUT_S,
        env={"SCHEMATHESIS_HOOKS": str(hooks)},
    )
    found = failures(report) if report.exists() else []
    assert code == 0, "\n".join([*found, output[-5_000:]])

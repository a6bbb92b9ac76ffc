"""``/llms.txt`` and ``/llms-full.txt``: the API told to an AI agent (https://llmstxt.org).

``/llms.txt`` is a short guide: what darkroom is, how to authenticate, the main flows with example
requests, and where the whole contract is. ``/llms-full.txt`` is that contract in Markdown: every
operation, the webhook messages and the problem codes.

Both are rendered from the OpenAPI document (:func:`openapi.openapi_document`) of the same route
declarations the app serves, so they cannot drift from it: the guide names each request of a flow
by its operation id and takes its method, path, scope and example body from the document (a
renamed path changes the text, a removed operation fails the rendering), and the full text is the
document itself, rendered. Like ``/openapi.json`` they are not operations of the document: public
(no token), plain text (the llms.txt convention; the content is Markdown), built once per app,
with an ETag and a five-minute public cache.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shlex
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from darkroom_ingest.api import all_routes
from darkroom_ingest.api.declare import Route
from darkroom_ingest.api.openapi import openapi_document
from darkroom_ingest.tokens import Scope, effective_scopes
from darkroom_ingest.web_support import SETTINGS

GUIDE_PATH = "/llms.txt"
FULL_PATH = "/llms-full.txt"
OPENAPI_PATH = "/openapi.json"
CACHE_CONTROL = "public, max-age=300"
PROBLEM_TYPE = "application/problem+json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Schema keywords shown beside a field's type.
LIMITS = (
    "minLength",
    "maxLength",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "pattern",
)

# Past this many operations answering a problem, the list of problems names no operation.
MANY = 12

Doc = dict[str, Any]

routes = web.RouteTableDef()


# ---- the operations of a document ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of an OpenAPI document, as the texts name it."""

    method: str
    path: str
    spec: Doc

    @property
    def id(self) -> str:
        return str(self.spec.get("operationId", ""))

    @property
    def line(self) -> str:
        """``POST /v1/events``: the request line, as both texts write it."""
        return f"{self.method} {self.path}"

    @property
    def public(self) -> bool:
        return self.spec.get("security") == []

    @property
    def scopes(self) -> list[str]:
        """The scopes of its security requirements (any one of them is enough)."""
        found = (s for req in self.spec.get("security", []) for v in req.values() for s in v)
        return list(dict.fromkeys(found))

    def url(self, query: str = "") -> str:
        """The request's URL for a shell: ``$BASE`` and each path parameter a variable
        (``{event_id}`` -> ``$EVENT_ID``)."""
        path = self.path
        for name in _path_params(path):
            path = path.replace("{" + name + "}", "$" + name.upper())
        return f'"$BASE{path}{query}"'

    def params(self, where: str) -> list[Doc]:
        return [p for p in self.spec.get("parameters", []) if p.get("in") == where]


def _path_params(path: str) -> list[str]:
    return [seg[1:-1] for seg in path.split("/") if seg.startswith("{") and seg.endswith("}")]


def operations(document: Doc) -> Iterator[Operation]:
    """Every operation of the document, in its order."""
    for path, item in document.get("paths", {}).items():
        for method, spec in item.items():
            if method in METHODS:
                yield Operation(method.upper(), path, spec)


class Operations:
    """The document's operations by operation id; naming one it lacks is an error, so a guide
    cannot describe a request the API no longer declares."""

    def __init__(self, document: Doc) -> None:
        self.document = document
        self.by_id = {op.id: op for op in operations(document)}

    def __getitem__(self, operation_id: str) -> Operation:
        try:
            return self.by_id[operation_id]
        except KeyError:
            raise LookupError(
                f"the llms.txt guide names the operation {operation_id!r}, which the API does not "
                "declare (renamed or removed?)"
            ) from None

    def schema(self, ref: str) -> Doc:
        return dict(self.document["components"]["schemas"][ref.rsplit("/", 1)[-1]])

    def body_example(self, op: Operation) -> Any | None:
        """The first example of the operation's JSON body model, if the model gives one."""
        content = op.spec.get("requestBody", {}).get("content", {})
        schema = content.get("application/json", {}).get("schema", {})
        if "$ref" not in schema:
            return None
        examples = self.schema(schema["$ref"]).get("examples") or [None]
        return examples[0]

    def answering(self, status: str, model: str) -> list[Operation]:
        """The operations that answer ``status`` with the schema ``model``."""
        ref = f"#/components/schemas/{model}"
        return [
            op
            for op in self.by_id.values()
            if any(
                c.get("schema", {}).get("$ref") == ref
                for c in op.spec.get("responses", {}).get(status, {}).get("content", {}).values()
            )
        ]

    def line_of(self, operation_id: str, fallback: str) -> str:
        """An operation's request line, for a text that can do without it."""
        op = self.by_id.get(operation_id)
        return f"`{op.line}`" if op is not None else fallback


def base_url_of(document: Doc) -> str:
    servers = document.get("servers") or [{"url": ""}]
    return str(servers[0]["url"]).rstrip("/")


# ---- Markdown from JSON Schema ------------------------------------------------------------------


def _text(value: Any) -> str:
    """A description as Markdown: docstring indentation removed, reST literals as Markdown's."""
    return inspect.cleandoc(str(value or "")).replace("``", "`")


def _line(value: Any) -> str:
    """A description on one line (a list item)."""
    return " ".join(_text(value).split())


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def type_of(schema: Any) -> str:
    """A schema's type in a few words: ``string (date-time)``, ``array of `Photo```,
    ``integer or null``, ``one of `"a"`, `"b"```."""
    if not isinstance(schema, dict) or not schema:
        return "any"
    if "$ref" in schema:
        return f"`{_ref_name(schema['$ref'])}`"
    if "const" in schema:
        return f"`{_json(schema['const'])}`"
    if "enum" in schema:
        return "one of " + ", ".join(f"`{_json(v)}`" for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            parts = [p for p in schema[key] if p.get("type") != "null"]
            nullable = len(parts) < len(schema[key])
            text = " or ".join(dict.fromkeys(type_of(p) for p in parts)) or "null"
            return f"{text} or null" if nullable and parts else text
    if "allOf" in schema:
        return " and ".join(type_of(p) for p in schema["allOf"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(map(str, kind))
    if kind == "array":
        return f"array of {type_of(schema['items'])}" if "items" in schema else "array"
    if kind == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return f"object of string to {type_of(extra)}"
        return "object"
    if kind is None:
        return "any"
    return f"{kind} ({schema['format']})" if "format" in schema else str(kind)


def _limits(schema: Doc) -> str:
    parts = [schema, *(p for p in schema.get("anyOf", []) if isinstance(p, dict))]
    found = [
        f"{k} `{p[k]}`" if k == "pattern" else f"{k} {p[k]}"
        for p in parts
        for k in LIMITS
        if k in p
    ]
    return ", ".join(found)


def field_lines(schema: Doc) -> list[str]:
    """An object schema's fields, one list item each: name, type, required, default, limits and
    description."""
    required = set(schema.get("required", []))
    return [
        _field_line(name, prop, name in required, prop.get("description"))
        for name, prop in schema.get("properties", {}).items()
    ]


def _field_line(name: str, schema: Doc, required: bool, description: Any) -> str:
    """One field or parameter: name, type, required, default, limits and description."""
    facts = [type_of(schema), "required" if required else "optional"]
    if "default" in schema:
        facts.append(f"default `{_json(schema['default'])}`")
    if limits := _limits(schema):
        facts.append(limits)
    text = _line(description)
    return f"- `{name}` ({'; '.join(facts)})" + (f": {text}" if text else "")


def schema_block(name: str, schema: Doc) -> list[str]:
    out = [f"### `{name}`", ""]
    if schema.get("description"):
        out += [_text(schema["description"]), ""]
    if "properties" in schema:
        out += field_lines(schema) or ["(no fields)"]
        if schema.get("additionalProperties") is False:
            out += ["", "Other fields are refused."]
    else:
        out.append(f"Type: {type_of(schema)}.")
    for example in schema.get("examples", [])[:1]:
        out += ["", "Example:", "", "```json", json.dumps(example, indent=2), "```"]
    out.append("")
    return out


# ---- /llms-full.txt -----------------------------------------------------------------------------


def auth_phrase(op: Operation) -> str:
    if op.public:
        return "no token"
    scopes = op.scopes
    if not scopes:
        return "any valid token"
    if len(scopes) == 1:
        return f"scope `{scopes[0]}`"
    return "one of the scopes " + ", ".join(f"`{s}`" for s in scopes)


def _param_lines(params: Iterable[Doc]) -> list[str]:
    return [
        _field_line(p["name"], p.get("schema", {}), bool(p.get("required")), p.get("description"))
        for p in params
    ]


def _content_lines(ops: Operations, content: Doc) -> list[str]:
    out = []
    for media, body in content.items():
        schema = body.get("schema", {})
        out.append(f"- `{media}`: {type_of(schema)}")
        inline = ops.schema(schema["$ref"]) if "$ref" in schema else schema
        out += ["  " + line for line in field_lines(inline)]
    return out


def _problems_of(op: Operation) -> list[tuple[str, int, str]]:
    """(code, status, title) of every problem the operation documents."""
    found = []
    for status, answer in op.spec.get("responses", {}).items():
        problem = answer.get("content", {}).get(PROBLEM_TYPE)
        if problem is None:
            continue
        for code, example in problem.get("examples", {}).items():
            found.append((code, int(status), str(example.get("value", {}).get("title", ""))))
    return found


def operation_block(ops: Operations, op: Operation) -> list[str]:
    spec = op.spec
    out = [f"### `{op.line}`: {spec.get('summary', '')}", ""]
    out += [f"Operation `{op.id}`. Auth: {auth_phrase(op)}.", ""]
    if spec.get("description"):
        out += [_text(spec["description"]), ""]
    for where, title in (("path", "Path parameters"), ("query", "Query"), ("header", "Headers")):
        if params := op.params(where):
            out += [f"{title}:", "", *_param_lines(params), ""]
    if body := spec.get("requestBody"):
        need = "required" if body.get("required") else "optional"
        out += [f"Request body ({need}):", "", *_content_lines(ops, body.get("content", {})), ""]
        if (example := ops.body_example(op)) is not None:
            out += ["Example body:", "", "```json", json.dumps(example, indent=2), "```", ""]
    answers = []
    for status, answer in spec.get("responses", {}).items():
        content = answer.get("content", {})
        if PROBLEM_TYPE in content:
            continue
        line = f"- `{status}`: {_line(answer.get('description'))}"
        if content:
            line += "; " + ", ".join(
                f"{type_of(c.get('schema'))} (`{media}`)" for media, c in content.items()
            )
        if headers := answer.get("headers"):
            line += "; headers " + ", ".join(
                f"`{name}` ({_line(h.get('description'))})" for name, h in headers.items()
            )
        answers.append(line)
    out += ["Answers:", "", *answers, ""]
    if problems := _problems_of(op):
        out += [f"Errors (`{PROBLEM_TYPE}`, by `code`):", ""]
        out += [f"- `{status}` `{code}`: {title}" for code, status, title in problems]
        out.append("")
    return out


def _scope_lines() -> list[str]:
    lines = []
    for scope in Scope:
        implied = sorted(effective_scopes([scope.value]) - {scope.value})
        also = f": also grants {', '.join(f'`{s}`' for s in implied)}" if implied else ""
        lines.append(f"- `{scope.value}`{also}")
    return lines


def _security_lines(document: Doc) -> list[str]:
    lines = []
    for name, scheme in document.get("components", {}).get("securitySchemes", {}).items():
        if scheme.get("type") == "http" and scheme.get("scheme") == "bearer":
            lines.append(f"- `{name}`: the header `Authorization: Bearer <token>`")
        elif scheme.get("type") == "apiKey":
            lines.append(f"- `{name}`: the {scheme.get('in')} `{scheme.get('name')}: <token>`")
        else:
            lines.append(f"- `{name}`: {_json(scheme)}")
    return lines


def webhook_lines(ops: Operations) -> list[str]:
    webhooks: Doc = ops.document.get("webhooks", {})
    posts = [(name, item["post"]) for name, item in webhooks.items() if "post" in item]
    if not posts:
        return []
    common = posts[0][1]
    subscribe = ops.line_of("createWebhook", "the webhooks API")
    catalogue = ops.line_of("listWebhookEventTypes", "the API")
    out = [
        "## Webhook messages",
        "",
        f"Subscribe an endpoint with {subscribe}; the catalogue, with each type's JSON Schema, is "
        f"{catalogue}. Each message is POSTed as JSON to the endpoint, signed as Standard "
        "Webhooks (https://www.standardwebhooks.com) with the endpoint's secret, with these "
        "headers:",
        "",
        *_param_lines(common.get("parameters", [])),
        "",
        "The endpoint answers:",
        "",
        *(
            f"- `{status}`: {_line(r.get('description'))}"
            for status, r in common.get("responses", {}).items()
        ),
        "",
    ]
    for name, spec in posts:
        out += [f"### `{name}`", "", _text(spec.get("description")), ""]
        if spec.get("parameters") != common.get("parameters"):
            out += ["Headers:", "", *_param_lines(spec.get("parameters", [])), ""]
        if spec.get("responses") != common.get("responses"):
            responses = spec.get("responses", {}).items()
            out += ["Answers:", ""]
            out += [f"- `{s}`: {_line(r.get('description'))}" for s, r in responses]
            out.append("")
        schema = spec.get("requestBody", {}).get("content", {}).get("application/json", {})
        schema = schema.get("schema", {})
        out += [f"Body: {type_of(schema)}", ""]
        message = ops.schema(schema["$ref"]) if "$ref" in schema else schema
        out += [*field_lines(message), ""]
        # The payload (``data``) and any other model the message holds, field by field.
        for field, prop in message.get("properties", {}).items():
            if "$ref" in prop:
                ref = _ref_name(prop["$ref"])
                out += [f"`{field}` is `{ref}`:", "", *field_lines(ops.schema(ref)), ""]
    return out


def _problem_schema(ops: Operations) -> Doc:
    for op in ops.by_id.values():
        for answer in op.spec.get("responses", {}).values():
            schema = answer.get("content", {}).get(PROBLEM_TYPE, {}).get("schema", {})
            if schema:
                return schema if "$ref" not in schema else {"$ref": schema["$ref"]}
    return {}


def problem_lines(ops: Operations) -> list[str]:
    by_code: dict[tuple[str, int], dict[str, None]] = {}
    answered_by: dict[tuple[str, int], dict[str, None]] = {}
    for op in ops.by_id.values():
        for code, status, title in _problems_of(op):
            by_code.setdefault((code, status), {})[title] = None
            answered_by.setdefault((code, status), {})[op.id] = None
    schema = _problem_schema(ops)
    out = [
        "## Problems",
        "",
        f"Every error is `{PROBLEM_TYPE}` (RFC 9457). Act on its `code`, which keeps its meaning;"
        " the title is for people.",
        "",
    ]
    if schema:
        fields = ops.schema(schema["$ref"]) if "$ref" in schema else schema
        out += [f"Its fields ({type_of(schema)}):", "", *field_lines(fields), ""]
    out += ["Every code, its status and titles, and the operations that answer it:", ""]
    for (code, status), titles in sorted(by_code.items()):
        title = "; ".join(titles)
        ids = list(answered_by[(code, status)])
        if len(ids) == len(ops.by_id):
            who = "any operation"
        elif len(ids) > MANY:
            who = f"{len(ids)} operations (each lists it)"
        else:
            who = ", ".join(f"`{i}`" for i in ids)
        out.append(f"- `{code}` ({status}): {title}. Answered by {who}.")
    out.append("")
    return out


def render_full(document: Doc) -> str:
    """The whole contract of an OpenAPI document, in Markdown."""
    ops = Operations(document)
    base = base_url_of(document)
    info = document.get("info", {})
    out = [
        f"# {info.get('title', 'API')}: the full contract",
        "",
        f"> {_line(info.get('description'))}",
        "",
        f"This is the OpenAPI {document.get('openapi', '')} document served at "
        f"{base}{OPENAPI_PATH} (version {info.get('version', '')}), rendered in Markdown from the "
        f"same route declarations and models. Base URL: {base}. A short guide with example "
        f"requests: {base}{GUIDE_PATH}.",
        "",
        "## Authentication",
        "",
        "Send a token in one of:",
        "",
        *_security_lines(document),
        "",
        "Each operation says what it needs: `scope x`, `one of the scopes x, y` (any one is "
        "enough), `any valid token`, or `no token`. The scopes, and those each grants too "
        "(`GET /v1/me` answers a token's own):",
        "",
        *_scope_lines(),
        "",
    ]
    tags = [t["name"] for t in document.get("tags", [])]
    grouped: dict[str, list[Operation]] = {t: [] for t in tags}
    for op in ops.by_id.values():
        grouped.setdefault((op.spec.get("tags") or ["other"])[0], []).append(op)
    for tag, members in grouped.items():
        if not members:
            continue
        out += [f"## Operations: {tag}", ""]
        for op in members:
            out += operation_block(ops, op)
    out += webhook_lines(ops)
    out += problem_lines(ops)
    out += [
        "## Schemas",
        "",
        "Every model the operations and messages name.",
        "",
    ]
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        out += schema_block(name, schema)
    return "\n".join(out).rstrip() + "\n"


# ---- /llms.txt ----------------------------------------------------------------------------------


def _request(op: Operation) -> str:
    """``POST /v1/events`` (scope `events.write`)"""
    return f"`{op.line}` ({auth_phrase(op)})"


def _curl(ops: Operations, op: Operation, *extra: str, query: str = "") -> list[str]:
    """A curl command for the operation: its method and URL from the document, the token, and
    its body model's example for a JSON body."""
    example = None if extra else ops.body_example(op)
    sends = bool(extra) or example is not None
    # curl sends a body with POST, and nothing with GET.
    implied = "POST" if sends else "GET"
    method = "" if op.method == implied else f" -X {op.method}"
    lines = [f"curl -s{method} {op.url(query)}"]
    if not op.public:
        lines.append('-H "Authorization: Bearer $TOKEN"')
    if example is not None:
        lines.append("-H 'Content-Type: application/json'")
        lines.append("-d " + shlex.quote(_json(example)))
    lines += extra
    return ["```sh", " \\\n     ".join(lines), "```"]


def _media_fields(ops: Operations, op: Operation) -> list[str]:
    """The fields of the operation's answer that carry links (``url``, ``*_url``, ``urls``)."""
    content = op.spec.get("responses", {}).get("200", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema", {})
    model = ops.schema(schema["$ref"]) if "$ref" in schema else schema
    links = {
        name: prop
        for name, prop in model.get("properties", {}).items()
        if name == "url" or name.endswith(("_url", "urls"))
    }
    return field_lines({"properties": links, "required": model.get("required", [])})


def _names(params: Iterable[Doc]) -> str:
    return ", ".join(f"`{p['name']}`" for p in params)


def render_guide(document: Doc) -> str:
    """The short guide for an agent: its requests from the document, by operation id."""
    ops = Operations(document)
    base = base_url_of(document)
    me = ops["getMe"]
    create_event = ops["createEvent"]
    batch = ops["uploadPhotos"]
    create_upload, put_chunk = ops["createUpload"], ops["putChunk"]
    get_upload, complete = ops["getUpload"], ops["completeUpload"]
    tus_create = ops["tusCreate"]
    list_photos, get_photo, thumbnail = ops["listPhotos"], ops["getPhoto"], ops["downloadThumbnail"]
    create_webhook, event_types = ops["createWebhook"], ops["listWebhookEventTypes"]
    test_message, deliveries = ops["sendTestMessage"], ops["listDeliveries"]
    get_operation, cancel_operation = ops["getOperation"], ops["cancelOperation"]
    guest_page, guest_link = ops["guestPage"], ops["createGuestLink"]
    download_link, create_archive = ops["createDownloadLink"], ops["createArchive"]
    signed_media = ops["downloadMedia"]
    reading = {get_operation.id, cancel_operation.id}
    starting = [op for op in ops.answering("202", "OperationOut") if op.id not in reading]
    states = ops.schema("OperationState").get("enum", [])
    header_id, header_time, header_sig = (
        _webhook_header(document, suffix) for suffix in ("-id", "-timestamp", "-signature")
    )
    message_types = list(document.get("webhooks", {}))
    tus_endpoint = base + tus_create.path

    out = [
        "# darkroom",
        "",
        "> darkroom is an open backend for event photo platforms: photographers and apps upload "
        "an event's photos and videos, thumbnails appear, broken metadata gets repaired, and "
        "other systems hear about every photo through signed webhooks. This is its REST API, "
        f"upload-ingest, at {base}.",
        "",
        "Notes for an agent:",
        "",
        "- JSON in and out, except uploads (multipart, raw bytes) and media. Ids are opaque "
        "strings with a type prefix (`ev_`, `ph_`, `wh_`, `op_`); times are UTC ISO 8601.",
        f"- Errors are `{PROBLEM_TYPE}` (RFC 9457) with a stable `code`: act on the code. A bad "
        "field is 422 `validation_failed` with `errors: [{field, detail, code}]`.",
        "- Lists take `limit` (1 to 200, default 50) and `offset`, and answer "
        "`{items, total, limit, offset}`.",
        "- Send an `Idempotency-Key` header (any unique string) with every write, and the same "
        "one when you retry it: the first answer is replayed instead of the write being done "
        "twice.",
        f"- The whole contract: the OpenAPI 3.1 document at {base}{OPENAPI_PATH}, the same in "
        f"Markdown at {base}{FULL_PATH}.",
        "",
        "## Authenticate",
        "",
        "Send a token in `Authorization: Bearer <token>` or `X-Auth-Token: <token>`. Tokens are "
        "made by the operator on the server (`darkroom token create --scopes ...`), shown once; "
        "the API cannot make one for you. A token has scopes (a scope may grant others too):",
        "",
        *_scope_lines(),
        "",
        f"{_request(me)} tells what a token is and may do (`effective_scopes`, and `event_id` "
        "for a token bound to one event, which sees only that event):",
        "",
        "```sh",
        f"export BASE={base} TOKEN=drk_...",
        "```",
        "",
        *_curl(ops, me),
        "",
        "No token or an unknown one: 401 (`unauthenticated`, `invalid_token`, `token_expired`); a "
        "missing scope: 403 `insufficient_scope` with `required_scope`.",
        "",
        "## Create an event",
        "",
        f"{_request(create_event)}; the answer (201) is the event: keep its `id` as `EVENT_ID`.",
        "",
        *_curl(ops, create_event),
        "",
        "## Upload photos (a multipart batch)",
        "",
        f"{_request(batch)}: `multipart/form-data`, the files in the `photos` field. Each file is "
        "judged by its bytes: the good ones are kept, the others listed with a `code` (201 "
        "`{uploaded: [...], skipped: [{filename, field, code, detail}]}`; 400 `no_valid_files` "
        "if none could be kept). A file whose bytes equal a photo of the event answers that photo "
        "with `duplicate_of`.",
        "",
        *_curl(ops, batch, "-F photos=@IMG_0001.jpg", "-F photos=@IMG_0002.png"),
        "",
        "## Resumable uploads (videos, big files)",
        "",
        "Videos and files over the batch limit go in chunks, resumable after any failure:",
        "",
        f"1. {_request(create_upload)} with `{{filename, size, mime_type, sha256?}}` answers "
        "`{upload_id, chunk_size, chunk_count, missing, ...}`.",
        f"2. {_request(put_chunk)}: the raw bytes of chunk `index` (from 0), each exactly "
        "`chunk_size` bytes but the last; in any order, in parallel, again if in doubt.",
        f"3. {_request(get_upload)}: which chunks are `missing`; resume from there.",
        f"4. {_request(complete)}: the photo, made exactly once (a repeat answers the same one); "
        "409 `missing_chunks` lists what is still to send.",
        "",
        *_curl(ops, create_upload),
        "",
        *_curl(ops, put_chunk, "--data-binary @chunk.bin"),
        "",
        "Or tus 1.0 (tus-js-client, Uppy, tuspy, TUSKit): point any tus client at "
        f"{tus_endpoint} ({_request(tus_create)} creates an upload) with the token header and "
        "`Upload-Metadata` `event` (the event's id), `filename` and `filetype`. The PATCH that "
        "brings the last byte makes the photo and names it in `X-Darkroom-Photo-Id`.",
        "",
        "```python",
        "from tusclient import client  # pip install tuspy",
        f'tus = client.TusClient("{tus_endpoint}", headers={{"Authorization": "Bearer drk_..."}})',
        'tus.uploader("ceremony.mp4", metadata={"event": "ev_...", '
        '"filename": "ceremony.mp4"}).upload()',
        "```",
        "",
        "## List photos",
        "",
        f"{_request(list_photos)}, query {_names(list_photos.params('query'))}; one photo: "
        f"{_request(get_photo)}. A photo's media, as its fields say:",
        "",
        *_media_fields(ops, get_photo),
        "",
        f"Media fetched with the token header is served by routes such as {_request(thumbnail)}. "
        "A thumbnail exists once the photo is processed (`photo.processed`).",
        "",
        *_curl(ops, list_photos, query="?limit=50&offset=0"),
        "",
        "## Share media without a token",
        "",
        f"- Each photo's `urls` are signed links ({_request(signed_media)}) that work without a "
        "token until `urls.expires_at`: put them in `<img src>` or hand them on. They stop at "
        "once when the photo is deleted or hidden; read the photo again for fresh ones.",
        f"- {_request(download_link)} answers a link that downloads the original as an "
        "attachment, valid as long as you ask (`expires_in_seconds`).",
        f"- {_request(create_archive)} starts an Operation that writes a ZIP of the event's "
        "photos (or of `photo_ids`); when it is done, its `result.download_url` downloads it.",
        "",
        "## Webhooks",
        "",
        f"1. {_request(event_types)}: the message types with their JSON Schemas. The types: "
        + ", ".join(f"`{t}`" for t in message_types)
        + ".",
        f"2. {_request(create_webhook)} subscribes an https endpoint to types (`photo.*` for a "
        "family). Its answer carries the signing `secret` (`whsec_...`) once: keep it.",
        f"3. {_request(test_message)} sends a test message; {_request(deliveries)} is the log "
        "of every attempt.",
        "",
        *_curl(ops, create_webhook),
        "",
        "Each message is a POST of `{id, type, timestamp, schema_version, data}` (a photo in "
        f"`data.photo`, with signed `urls`) with the headers `{header_id}`, "
        f"`{header_time}` and `{header_sig}` (Standard Webhooks). Verify it on the raw body "
        "before parsing it, answer 2xx fast, and dedupe on "
        f"`{header_id}` (a message may come more than once; failures are retried with backoff):",
        "",
        "```python",
        "import base64, hashlib, hmac, time",
        "",
        "def verify(secret: str, headers: dict[str, str], body: bytes, tolerance: int = 300) "
        "-> bool:",
        f'    msg_id, ts = headers["{header_id}"], headers["{header_time}"]',
        "    if abs(time.time() - int(ts)) > tolerance:",
        "        return False  # too old or too new: a replay",
        '    key = base64.b64decode(secret.removeprefix("whsec_"))',
        '    signed = f"{msg_id}.{ts}.".encode() + body',
        "    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()",
        "    return any(  # one signature per active secret (two during a rotation)",
        '        hmac.compare_digest(expected, sig.removeprefix("v1,"))',
        f'        for sig in headers["{header_sig}"].split()',
        '        if sig.startswith("v1,")',
        "    )",
        "```",
        "",
        "(Or the `standardwebhooks` package: `Webhook(secret).verify(body, headers)`.)",
        "",
        "## Operations (long work)",
        "",
        "Some requests start work that outlives them and answer 202 with an Operation "
        "`{id, kind, state, progress, result}`: "
        + ", ".join(_request(op) for op in starting)
        + ". "
        f"Read it with {_request(get_operation)} (query "
        f"{_names(get_operation.params('query'))}: wait up to that many seconds for it to end) "
        "until its `state` ends; the states: "
        + ", ".join(f"`{s}`" for s in states)
        + f". {_request(cancel_operation)} stops one that can be stopped.",
        "",
        *_curl(ops, get_operation, query="?wait=30"),
        "",
        "## Reference",
        "",
        f"- [OpenAPI 3.1 document]({base}{OPENAPI_PATH}): every operation, model and problem "
        "code, machine-readable.",
        f"- [The full contract in Markdown]({base}{FULL_PATH}): the same document as text: each "
        "operation with its scope, parameters, body fields, answers and errors; the webhook "
        "messages and their payloads; every problem code.",
        "",
        "## Optional",
        "",
        f"- [Guest upload page]({base}{guest_page.path}): where guests upload through a link "
        f"an event's owner makes with {_request(guest_link)}.",
        "",
    ]
    return "\n".join(out)


def _webhook_header(document: Doc, suffix: str) -> str:
    """The name of the Standard Webhooks header ending in ``suffix`` (``webhook-id`` ...)."""
    for item in document.get("webhooks", {}).values():
        for param in item.get("post", {}).get("parameters", []):
            if param.get("in") == "header" and param["name"].endswith(suffix):
                return str(param["name"])
    raise LookupError(f"the webhooks declare no *{suffix} header for the llms.txt guide")


# ---- serving -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    """A text served as it is, with its ETag."""

    body: bytes
    etag: str

    @classmethod
    def of(cls, text: str) -> Text:
        body = text.encode()
        return cls(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')

    def response(self, request: web.Request) -> web.Response:
        headers = {"ETag": self.etag, "Cache-Control": CACHE_CONTROL}
        # If-None-Match compares weakly (RFC 9110 13.1.2): W/"x" matches "x".
        tags = request.if_none_match or ()
        if any(t.value == "*" or f'"{t.value}"' == self.etag for t in tags):
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=self.body, content_type="text/plain", charset="utf-8", headers=headers
        )


@dataclass(frozen=True, slots=True)
class LlmsTexts:
    guide: Text
    full: Text


def llms_texts(declared: list[Route], base_url: str) -> LlmsTexts:
    """Both texts, from the OpenAPI document of these route declarations."""
    document = openapi_document(declared, base_url)
    return LlmsTexts(Text.of(render_guide(document)), Text.of(render_full(document)))


# Built on the first request of each app (from the routes and base URL it serves /openapi.json
# with), then kept as long as the app.
_BUILT: weakref.WeakKeyDictionary[web.Application, LlmsTexts] = weakref.WeakKeyDictionary()


def texts_of(app: web.Application) -> LlmsTexts:
    texts = _BUILT.get(app)
    if texts is None:
        texts = _BUILT[app] = llms_texts(all_routes(), app[SETTINGS].public_base_url)
    return texts


@routes.get(GUIDE_PATH)
async def llms_txt(request: web.Request) -> web.Response:
    return texts_of(request.app).guide.response(request)


@routes.get(FULL_PATH)
async def llms_full_txt(request: web.Request) -> web.Response:
    return texts_of(request.app).full.response(request)

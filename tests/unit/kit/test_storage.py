"""The data path's requests carry the very URL and signature botocore's own client would send.

moto_server checks no signature at all, so the integration tests cannot catch a signing mistake;
a real MinIO or S3 would refuse every request. This compares, at one frozen instant, what
``S3Http`` signs with what aiobotocore's client signs for the same operation.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from aiobotocore.session import get_session
from botocore.awsrequest import AWSPreparedRequest
from botocore.credentials import Credentials
from darkroom_kit.storage import S3Http, s3_client_config

ENDPOINT = "http://127.0.0.1:9"
BUCKET = "photos-bucket"
HOSTILE_KEY = "ev-1/originals/ü ph_1 file+(1)~=&?#%.jpg"
NOW = datetime.datetime(2026, 12, 2, 10, 0, 0)


class Captured(Exception):
    """Stops the client right before it would send."""


async def client_request(call: Callable[[Any], Awaitable[Any]]) -> AWSPreparedRequest:
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name="eu-west-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret/EXAMPLE+key",
        config=s3_client_config(),
    ) as client:

        def capture(request: AWSPreparedRequest, **_: Any) -> None:
            raise Captured(request)

        client.meta.events.register("before-send.s3", capture)
        with pytest.raises(Captured) as caught:
            await call(client)
    request: AWSPreparedRequest = caught.value.args[0]
    return request


def ours(
    method: str,
    key: str,
    query: dict[str, str],
    headers: dict[str, str],
    secret: str = "secret/EXAMPLE+key",
) -> tuple[str, dict[str, str]]:
    http = S3Http(
        mock.Mock(spec=aiohttp.ClientSession),
        ENDPOINT,
        BUCKET,
        Credentials("AKIDEXAMPLE", secret),
        "eu-west-1",
    )
    url, signed = http.sign(method, key, query, headers)
    return str(url), signed


def same_url(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.netloc, pa.path) == (pb.netloc, pb.path) and sorted(
        parse_qsl(pa.query, keep_blank_values=True)
    ) == sorted(parse_qsl(pb.query, keep_blank_values=True))


def header(request: AWSPreparedRequest, name: str) -> str:
    value = request.headers[name]
    return value.decode() if isinstance(value, bytes) else str(value)


CASES: list[tuple[str, Callable[[Any], Awaitable[Any]], str, dict[str, str], dict[str, str]]] = [
    (
        "GET",
        lambda c: c.get_object(Bucket=BUCKET, Key=HOSTILE_KEY, Range="bytes=0-262143"),
        HOSTILE_KEY,
        {},
        {"Range": "bytes=0-262143"},
    ),
    ("HEAD", lambda c: c.head_object(Bucket=BUCKET, Key=HOSTILE_KEY), HOSTILE_KEY, {}, {}),
    (
        "PUT",
        lambda c: c.put_object(
            Bucket=BUCKET, Key="a/b.webp", Body=b"xyz", ContentType="image/webp"
        ),
        "a/b.webp",
        {},
        {"Content-Type": "image/webp"},
    ),
    (
        "PUT",
        lambda c: c.upload_part(
            Bucket=BUCKET, Key=HOSTILE_KEY, UploadId="a+b/c==~x y", PartNumber=12, Body=b"xyz"
        ),
        HOSTILE_KEY,
        {"partNumber": "12", "uploadId": "a+b/c==~x y"},
        {},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=["ranged-get", "head", "put", "upload-part"])
async def test_signature_and_url_equal_botocores(case: Any) -> None:
    method, call, key, query, headers = case
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        theirs = await client_request(call)
        url, signed = ours(method, key, query, headers)
    assert theirs.method == method
    assert same_url(url, theirs.url), (url, theirs.url)
    assert signed["Authorization"] == header(theirs, "Authorization")
    assert signed["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    assert signed["X-Amz-Date"] == header(theirs, "X-Amz-Date")


def test_a_different_secret_gives_a_different_signature() -> None:
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        _, one = ours("GET", "k", {}, {})
        _, other = ours("GET", "k", {}, {}, secret="another")
    assert one["Authorization"] != other["Authorization"]

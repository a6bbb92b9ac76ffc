"""Presigned PUTs (direct uploads) are the URLs botocore's own presigner makes, on the public
endpoint when one is set.

moto_server checks no signature, so the integration tests cannot catch a signing mistake; a real
MinIO or S3 would refuse the client's PUT. This compares, at one frozen instant, the URL
``S3ObjectStore.presigned_put``/``presigned_part`` make with aiobotocore's
``generate_presigned_url`` for the same request.
"""

from __future__ import annotations

import datetime
from typing import Any
from unittest import mock
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from aiobotocore.session import get_session
from botocore.credentials import Credentials
from darkroom_kit.storage import S3Http, S3ObjectStore, s3_client_config

ENDPOINT = "http://127.0.0.1:9"
PUBLIC = "https://s3.photos.example.com"
BUCKET = "photos-bucket"
HOSTILE_KEY = "ev-1/originals/ü ph_1 file+(1)~=&?#%.jpg"
NOW = datetime.datetime(2026, 12, 2, 10, 0, 0)
ACCESS, SECRET = "AKIDEXAMPLE", "secret/EXAMPLE+key"


def store(public: str | None) -> S3ObjectStore:
    http = S3Http(
        mock.Mock(spec=aiohttp.ClientSession),
        ENDPOINT,
        BUCKET,
        Credentials(ACCESS, SECRET),
        "eu-west-1",
        public_endpoint_url=public,
    )
    return S3ObjectStore(mock.Mock(), http, BUCKET)


async def botocores(endpoint: str, operation: str, params: dict[str, Any], expires: int) -> str:
    async with get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="eu-west-1",
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        config=s3_client_config(),
    ) as client:
        url: str = await client.generate_presigned_url(
            operation, Params={"Bucket": BUCKET, **params}, ExpiresIn=expires
        )
    return url


def parts(url: str) -> tuple[str, str, list[tuple[str, str]]]:
    split = urlsplit(url)
    return split.netloc, split.path, sorted(parse_qsl(split.query, keep_blank_values=True))


@pytest.mark.parametrize(
    "public",
    [None, PUBLIC, "http://minio.example.com:80", "https://s3.example.com:8443/"],
    ids=["same-endpoint", "public-endpoint", "default-port", "other-port"],
)
async def test_presigned_put_and_part_equal_botocores(public: str | None) -> None:
    s3 = store(public)
    with (
        mock.patch("botocore.auth.get_current_datetime", return_value=NOW),
        mock.patch("darkroom_kit.storage._utc_now", return_value=NOW),
    ):
        put = s3.presigned_put(HOSTILE_KEY, "image/jpeg", 123_456, 900)
        theirs_put = await botocores(
            public or ENDPOINT,
            "put_object",
            {"Key": HOSTILE_KEY, "ContentType": "image/jpeg", "ContentLength": 123_456},
            900,
        )
        part = s3.presigned_part(HOSTILE_KEY, "a+b/c==~x y", 7, 600, checksum_crc32c="AAAAAA==")
        theirs_part = await botocores(
            public or ENDPOINT,
            "upload_part",
            {
                "Key": HOSTILE_KEY,
                "UploadId": "a+b/c==~x y",
                "PartNumber": 7,
                "ChecksumCRC32C": "AAAAAA==",
            },
            600,
        )
        plain = s3.presigned_part(HOSTILE_KEY, "up-1", 1, 600)
        theirs_plain = await botocores(
            public or ENDPOINT,
            "upload_part",
            {"Key": HOSTILE_KEY, "UploadId": "up-1", "PartNumber": 1},
            600,
        )
    # The same host, path and query, signature included (the client orders its query its own
    # way, which no signature covers).
    assert parts(put.url) == parts(theirs_put)
    assert (put.method, put.headers) == ("PUT", {"Content-Type": "image/jpeg"})
    assert dict(parts(put.url)[2])["X-Amz-SignedHeaders"] == "content-length;content-type;host"
    assert parts(part.url) == parts(theirs_part)
    assert part.headers == {"x-amz-checksum-crc32c": "AAAAAA=="}
    assert parts(plain.url) == parts(theirs_plain)
    assert plain.headers == {}
    assert urlsplit(put.url).hostname == urlsplit(public or ENDPOINT).hostname

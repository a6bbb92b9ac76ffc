"""``/v1/events/{event_id}/direct-uploads`` and ``/v1/direct-uploads`` (bytes straight to S3).

The parts are named as S3 and Uppy's ``@uppy/aws-s3`` name them (``PartNumber``, ``Size``,
``ETag``), so a client hands them over unchanged."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from darkroom_ingest.schemas.common import KeepDuplicates, Strict

# Base64 of a big-endian CRC32C (4 bytes), as S3's x-amz-checksum-crc32c carries it.
CRC32C_PATTERN = "^[A-Za-z0-9+/]{6}==$"


class DirectUploadCreate(Strict):
    """The file a client will send straight to S3."""

    model_config = Strict.model_config | {
        "json_schema_extra": {
            "examples": [
                {"filename": "IMG_0001.jpg", "size": 8123456, "mime_type": "image/jpeg"},
                {
                    "filename": "ceremony.mp4",
                    "size": 734003200,
                    "mime_type": "video/mp4",
                    "multipart": True,
                },
            ]
        }
    }

    filename: Annotated[str, Field(min_length=1, max_length=255, description="The file's name.")]
    size: Annotated[
        int,
        Field(ge=1, description="The whole file's size in bytes: a single PUT must be exactly it."),
    ]
    mime_type: str = Field(description="Its media type (checked against its bytes at the end).")
    sha256: Annotated[
        str | None,
        Field(
            pattern="^[0-9a-f]{64}$",
            description="Hex SHA-256 of the whole file: checked when the upload completes.",
        ),
    ] = None
    multipart: bool = Field(
        default=False,
        description="Send it as an S3 multipart upload (parts signed one by one) instead of one "
        "PUT; needed over DIRECT_PUT_MAX_BYTES.",
    )
    keep_duplicates: KeepDuplicates = None


class DirectUploadOut(BaseModel):
    """A direct upload's ticket: where its bytes go, and until when."""

    upload_id: str = Field(description="The upload's id: complete, list parts or cancel with it.")
    event_id: str = Field(description="The event it uploads to.")
    filename: str = Field(description="The file's name as it is kept.")
    size: int = Field(description="The whole file's size in bytes.")
    mime_type: str = Field(description="The declared media type.")
    key: str = Field(description="The object key S3 keeps the file under (chosen by the API).")
    multipart: bool = Field(description="Whether the bytes go as an S3 multipart upload.")
    s3_upload_id: str | None = Field(
        description="The S3 multipart upload's id (multipart only; null for one PUT)."
    )
    method: Literal["PUT"] | None = Field(
        description="The request to make to ``url`` (one PUT only; null for multipart)."
    )
    url: str | None = Field(
        description="The signed URL to PUT the whole file to (one PUT only; null for multipart: "
        "each part's URL is asked for on its own)."
    )
    headers: dict[str, str] = Field(
        description="The headers the PUT must carry, exactly (they are signed). Content-Length "
        "is signed too: the body must be exactly ``size`` bytes."
    )
    expires_at: str = Field(
        description="When the signed URL stops working (multipart: when the upload expires) "
        "(ISO 8601, UTC)."
    )
    complete_by: str = Field(
        description="When an upload not completed is dropped with its bytes (ISO 8601, UTC)."
    )
    complete_url: str = Field(description="Where to POST once the bytes are in S3.")


class PartSignQuery(Strict):
    crc32c: Annotated[
        str | None,
        Field(
            pattern=CRC32C_PATTERN,
            description="The part's CRC32C (base64), signed in as x-amz-checksum-crc32c: S3 then "
            "keeps the part only if its bytes have it.",
        ),
    ] = None


class PartTicketOut(BaseModel):
    """A signed URL for one part (Uppy's ``signPart`` answer)."""

    part_number: int = Field(description="The part's number, from 1.")
    method: Literal["PUT"] = Field(description="The request to make to ``url``.")
    url: str = Field(description="The signed URL to PUT the part's bytes to.")
    headers: dict[str, str] = Field(
        description="The headers the PUT must carry, exactly (they are signed)."
    )
    expires_at: str = Field(description="When the URL stops working (ISO 8601, UTC).")


class PartBatchSign(Strict):
    """Parts to sign in one request (a client that knows them all up front)."""

    model_config = Strict.model_config | {
        "json_schema_extra": {"examples": [{"part_numbers": [1, 2, 3, 4]}]}
    }

    part_numbers: Annotated[
        list[Annotated[int, Field(ge=1, le=10_000)]],
        Field(min_length=1, max_length=1000, description="The parts' numbers, 1 to 10,000."),
    ]


class PartTicketList(BaseModel):
    """Signed URLs for several parts, in the order asked."""

    parts: list[PartTicketOut] = Field(description="One signed PUT per part asked for.")


class S3Part(BaseModel):
    """A part S3 holds, named as S3 names it."""

    model_config = ConfigDict(populate_by_name=True)

    part_number: int = Field(alias="PartNumber", description="The part's number, from 1.")
    size: int = Field(alias="Size", description="Its size in bytes.")
    etag: str = Field(alias="ETag", description="Its ETag, as S3 answered the part's PUT.")


class PartsOut(BaseModel):
    """The parts S3 holds of a multipart upload (Uppy's ``listParts`` answer is ``parts``)."""

    parts: list[S3Part] = Field(description="The parts, by number.")


class SentPart(Strict):
    """A part as the client's PUT was answered."""

    model_config = Strict.model_config | {"populate_by_name": True}

    part_number: Annotated[
        int, Field(alias="PartNumber", ge=1, le=10_000, description="The part's number.")
    ]
    etag: Annotated[
        str,
        Field(
            alias="ETag",
            min_length=1,
            max_length=200,
            description="The ETag S3 answered its PUT with (quotes or not).",
        ),
    ]


class DirectComplete(Strict):
    """What the client says it sent; nothing of it is trusted."""

    model_config = Strict.model_config | {
        "json_schema_extra": {"examples": [{}, {"parts": [{"PartNumber": 1, "ETag": '"9b2c..."'}]}]}
    }

    parts: Annotated[
        list[SentPart] | None,
        Field(
            max_length=10_000,
            description="A multipart upload's parts as its client sent them (Uppy's "
            "``completeMultipartUpload``): they must be exactly those S3 holds, or nothing is "
            "kept (409 parts_mismatch). Left out: the parts S3 holds are used.",
        ),
    ] = None

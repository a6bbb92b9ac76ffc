"""Signed media links: the query a link carries, and download links."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from darkroom_ingest.schemas.common import Strict

MAX_LINK_SECONDS = 7 * 24 * 3600


class LinkQuery(BaseModel):
    """What a signed link carries in its query. Every value is checked by the signature, not
    here: a link with a value missing or wrong is 403 link_invalid, like any altered link.
    Other parameters (a cache buster) are ignored."""

    model_config = ConfigDict(extra="ignore")

    exp: str | None = Field(default=None, description="When it expires, in Unix seconds.")
    kid: str | None = Field(default=None, description="The id of the key that signed it.")
    f: str | None = Field(
        default=None, description="Its flags: d (a download), h (may show a hidden photo)."
    )
    sig: str | None = Field(default=None, description="Its signature.")

    def values(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class DownloadLinkIn(Strict):
    """How long the link should work."""

    expires_in_seconds: int = Field(
        default=3600,
        ge=60,
        le=MAX_LINK_SECONDS,
        description="At least this long (rounded up to the link window, or to this when it is "
        "shorter); at most 7 days.",
    )


class DownloadLinkOut(BaseModel):
    """A link that downloads the original, without a token, until it expires."""

    url: str = Field(
        description="GET it for the original with Content-Disposition: attachment and the "
        "name it was uploaded as. Each full download counts in download_count."
    )
    filename: str = Field(description="The name the download is saved as.")
    expires_at: str = Field(description="When it stops working (ISO 8601, UTC).")

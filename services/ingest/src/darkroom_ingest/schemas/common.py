"""Models every resource uses: strict inputs, pages, problems."""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

MAX_OFFSET = 1_000_000_000

# Whether a file whose bytes equal a photo's already in the event is stored again.
KeepDuplicates = Annotated[
    bool | None,
    Field(
        description="Store the file even if a photo in the event has the same bytes (SHA-256). "
        "By default (null: the event's keep_duplicates, off unless changed) such a file is not "
        "stored: the answer is the photo already there, with duplicate_of."
    ),
]
EventKeepsDuplicates = Annotated[
    bool | None,
    Field(
        description="Store a file even if a photo in the event has the same bytes (SHA-256). "
        "Off by default: such a file is answered with the photo already there (duplicate_of). "
        "An upload may ask otherwise for itself."
    ),
]


class Strict(BaseModel):
    """A request body or query: unknown fields are an error (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list."""

    items: list[T] = Field(description="This page's items.")
    total: int = Field(description="How many items the whole list has.")
    limit: int = Field(description="The page size asked for.")
    offset: int = Field(description="How many items come before this page.")


class PageQuery(Strict):
    limit: Annotated[int, Field(ge=1, le=200, description="Page size.")] = 50
    # Bounded: MongoDB takes a skip of at most a signed 64-bit integer, and no one pages that far.
    offset: Annotated[int, Field(ge=0, le=MAX_OFFSET, description="Items to skip.")] = 0


class WaitQuery(Strict):
    wait: Annotated[
        float,
        Field(
            ge=0,
            le=60,
            description="Hold the answer up to this many seconds for the Operation to end (200 "
            "with its result if it does, 202 if not).",
        ),
    ] = 0


class FieldErrorOut(BaseModel):
    """One field that needs a change."""

    field: str = Field(
        description="A JSON pointer into the body (/name), or a query or form field."
    )
    detail: str = Field(description="What is wrong with it.")
    code: str | None = Field(default=None, description="A stable code for the error.")


class ProblemOut(BaseModel):
    """An error, as RFC 9457 problem+json with a stable ``code``."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI naming the problem type.")
    title: str = Field(description="A short summary of the problem type.")
    status: int = Field(description="The HTTP status.")
    code: str = Field(description="A stable, machine-readable code (such as slug_taken).")
    detail: str | None = Field(default=None, description="What happened this time.")
    instance: str | None = Field(default=None, description="The request path.")
    errors: list[FieldErrorOut] | None = Field(
        default=None, description="Each field that needs a change."
    )


JsonObject = dict[str, Any]

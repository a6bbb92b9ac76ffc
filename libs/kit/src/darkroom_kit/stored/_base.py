"""What every stored record model shares."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    """A MongoDB document read into a model. ``_id`` is ``id`` in Python; fields a model does not
    name (the outbox, leases, a newer version's additions) are ignored on read and never written
    back from here, because writes are narrow ``$set``s of the fields a service owns."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    id: str = Field(alias="_id")

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Self:
        return cls.model_validate(doc)

    @classmethod
    def maybe(cls, doc: dict[str, Any] | None) -> Self | None:
        return None if doc is None else cls.model_validate(doc)

    def document(self) -> dict[str, Any]:
        """The record as it is stored (``_id``, no None left out: a new record names every
        field it has, so a query on a missing field and one on a null field agree)."""
        return self.model_dump(by_alias=True)

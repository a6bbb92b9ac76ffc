"""An import's identities and the state it resumes from (pure: no servers)."""

from __future__ import annotations

from darkroom_ingest.imports import Result, Walk, import_ref, photo_id_of
from darkroom_kit.statuses import OperationState
from darkroom_kit.storage import ListedObject
from darkroom_kit.stored.operations import OperationRecord


def obj(key: str = "a/1.jpg", etag: str = "e1", size: int = 10) -> ListedObject:
    return ListedObject(key, size, 0, etag)


def test_an_object_is_one_photo_per_event_and_a_changed_object_another() -> None:
    ref = import_ref("ev_1", "drop", obj())
    assert ref == import_ref("ev_1", "drop", obj())
    assert photo_id_of(ref) == photo_id_of(import_ref("ev_1", "drop", obj()))
    others = {
        import_ref("ev_2", "drop", obj()),
        import_ref("ev_1", "other", obj()),
        import_ref("ev_1", "drop", obj(key="a/2.jpg")),
        import_ref("ev_1", "drop", obj(etag="e2")),
        import_ref("ev_1", "drop", obj(size=11)),
    }
    assert ref not in others
    assert len(others) == 5
    assert len({photo_id_of(r) for r in [ref, *others]}) == 6
    assert photo_id_of(ref).startswith("ph_")


def test_a_walk_resumes_from_what_its_operation_stored() -> None:
    walk = Walk(created_ms=5)
    walk.add(Result(obj("a/1.jpg"), "imported", photo_id="ph_1"), max_items=1)
    walk.add(Result(obj("a/2.jpg"), "skipped", "unsupported_type", "text"), max_items=1)
    walk.add(Result(obj("a/3.jpg"), "failed", "storage_error", "x"), max_items=1)
    walk.after = "a/3.jpg"
    stored = OperationRecord(
        _id="op_1",
        kind="s3_import",
        state=OperationState.RUNNING,
        created_ms=5,
        progress=walk.progress,
        cursor=walk.cursor(),
        details={"items": {k.removeprefix("items."): v for k, v in walk.take_new_items().items()}},
    )

    resumed = Walk.of(stored)

    assert resumed.progress == {"listed": 3, "imported": 1, "skipped": 1, "failed": 1}
    assert resumed.after == "a/3.jpg"
    # Reasons are bounded: the second one was counted, not kept.
    assert [i["key"] for i in resumed.result()["items"]] == ["a/2.jpg"]
    assert resumed.seen(obj("a/2.jpg"))
    assert not resumed.seen(obj("a/2.jpg", etag="changed"))
    assert walk.take_new_items() == {}


def test_a_source_prefix_is_a_whole_folder() -> None:
    """A base prefix "incoming" would let a caller's "-private/" reach "incoming-private/"."""
    import pytest
    from darkroom_ingest.settings import ImportSource
    from pydantic import ValidationError

    assert ImportSource(bucket="b", prefix="incoming/").prefix == "incoming/"
    assert ImportSource(bucket="b").prefix == ""
    with pytest.raises(ValidationError):
        ImportSource(bucket="b", prefix="incoming")

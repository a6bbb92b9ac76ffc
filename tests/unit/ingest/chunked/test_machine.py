"""The chunked upload's state machine (darkroom_ingest.chunked.machine) and the pure pieces
around it: checksums, the stored record, the API's view of it, and the error catalogue."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import google_crc32c
import pytest
from darkroom_ingest import errors
from darkroom_ingest.chunked import MAX_PARTS, Digests, machine, parse_digest_headers, upload_out
from darkroom_ingest.chunked.digests import ChunkHasher
from darkroom_ingest.chunked.machine import Completion, Rules
from darkroom_kit.errors import ErrorKind, ServiceError
from darkroom_kit.statuses import UPLOAD_ENDED, UploadState
from darkroom_kit.stored.uploads import StoredChunk, UploadFailure, UploadRecord

S = UploadState
NOW = 1_800_000_000_000
MB = 1_000_000
RULES = Rules(
    accepted_types=frozenset({"jpeg", "png", "mp4"}),
    max_image_bytes=200 * MB,
    max_video_bytes=10_000 * MB,
    chunk_bytes=8 * MB,
    expiry_ms=3_600_000,
)


def chunk(size: int) -> StoredChunk:
    return StoredChunk(etag="e", size=size, crc32c="AAAAAA==", at_ms=NOW)


def upload(
    state: UploadState = S.OPEN,
    *,
    size: int = 20 * MB,
    chunk_size: int = 8 * MB,
    arrived: tuple[int, ...] = (),
    expires_ms: int = NOW + 1000,
    **fields: Any,
) -> UploadRecord:
    count = max(1, -(-size // chunk_size))
    doc: dict[str, Any] = {
        "_id": "up_1",
        "event_id": "ev_1",
        "event_slug": "wedding",
        "photo_id": "ph_1",
        "key": "events/ev_1/ph_1/original",
        "s3_upload_id": "s3-1",
        "filename": "big.jpg",
        "size": size,
        "mime_type": "image/jpeg",
        "chunk_size": chunk_size,
        "chunk_count": count,
        "state": state.value,
        "parts": {str(i): chunk(chunk_size).model_dump() for i in arrived},
        "created_ms": NOW - 1000,
        "expires_ms": expires_ms,
        **fields,
    }
    return UploadRecord.of(doc)


def raised(call: Any, *args: Any) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        call(*args)
    return caught.value


# ---- states and moves ---------------------------------------------------------------------


def test_only_open_and_completing_have_moves_and_every_state_is_covered() -> None:
    assert set(machine.TRANSITIONS) == set(UploadState)
    assert {s for s, targets in machine.TRANSITIONS.items() if not targets} == UPLOAD_ENDED
    assert machine.sources(S.COMPLETING) == [S.OPEN, S.COMPLETING]  # a claim, or a takeover
    assert machine.sources(S.ABORTED) == machine.sources(S.EXPIRED) == [S.OPEN]
    assert machine.sources(S.OPEN) == [S.COMPLETING]  # the store failed: complete again
    assert machine.can_move(S.COMPLETING, S.FAILED)
    assert not machine.can_move(S.COMPLETED, S.OPEN)
    assert not machine.can_move(S.ABORTED, S.COMPLETING)


# ---- creation -----------------------------------------------------------------------------


def test_admit_keeps_a_valid_name_and_refuses_each_bad_field_by_name() -> None:
    assert RULES.admit("big.jpg", 10, "image/jpeg") == "big.jpg"
    bad_name = raised(RULES.admit, "../x.jpg", 10, "image/jpeg")
    assert (bad_name.kind, [e.field for e in bad_name.errors]) == (
        errors.INVALID_FILENAME,
        ["/filename"],
    )
    bad_type = raised(RULES.admit, "x.gif", 10, "image/gif")  # known, but not accepted here
    assert bad_type.kind == errors.UNSUPPORTED_TYPE
    assert bad_type.detail == "Allowed: image/jpeg, image/png, video/mp4"
    assert raised(RULES.admit, "x.exe", 10, "application/x-msdownload").kind == (
        errors.UNSUPPORTED_TYPE
    )


def test_images_and_videos_have_their_own_size_limits() -> None:
    assert RULES.admit("x.jpg", 200 * MB, "image/jpeg") == "x.jpg"
    too_big = raised(RULES.admit, "x.jpg", 200 * MB + 1, "image/jpeg")
    assert (too_big.kind, too_big.kind.status) == (errors.FILE_TOO_LARGE, 413)
    assert too_big.errors[0].field == "/size"
    assert RULES.admit("x.mp4", 10_000 * MB, "video/mp4") == "x.mp4"
    assert raised(RULES.admit, "x.mp4", 10_000 * MB + 1, "video/mp4").kind == errors.FILE_TOO_LARGE


@pytest.mark.parametrize(
    ("size", "layout"),
    [
        (0, (8 * MB, 1)),
        (1, (8 * MB, 1)),
        (8 * MB, (8 * MB, 1)),
        (8 * MB + 1, (8 * MB, 2)),
        (8 * MB * MAX_PARTS, (8 * MB, MAX_PARTS)),
    ],
)
def test_layout_uses_the_configured_chunk_size(size: int, layout: tuple[int, int]) -> None:
    got = RULES.layout(size)
    assert (got.chunk_size, got.chunk_count) == layout


def test_a_file_that_needs_more_than_s3s_part_limit_gets_bigger_chunks() -> None:
    size = 8 * MB * MAX_PARTS + 1
    got = RULES.layout(size)
    assert got.chunk_count <= MAX_PARTS
    assert got.chunk_size > 8 * MB
    assert got.chunk_size * got.chunk_count >= size > got.chunk_size * (got.chunk_count - 1)


def test_the_content_is_judged_by_its_bytes_not_its_declared_type() -> None:
    assert RULES.content(b"\xff\xd8\xff\xe0" + bytes(28), MB).name == "jpeg"
    assert RULES.content(b"\0\0\0\x18ftypmp42" + bytes(20), MB).name == "mp4"
    gif = b"GIF89a" + bytes(26)  # a real type, not accepted by these rules
    for head in (gif, b"", b"plain text, not an image"):
        refused = raised(RULES.content, head, MB)
        assert (refused.kind, refused.code) == (errors.UNSUPPORTED_CONTENT, "unsupported_type")


def test_the_limit_of_the_real_type_applies_not_the_declared_ones() -> None:
    # Declared a video (10,000 MB allowed), but the bytes are a JPEG: the image limit holds.
    jpeg = b"\xff\xd8\xff\xe0" + bytes(28)
    assert RULES.content(jpeg, 200 * MB).name == "jpeg"
    refused = raised(RULES.content, jpeg, 200 * MB + 1)
    assert (refused.kind, refused.kind.status) == (errors.FILE_TOO_LARGE, 413)
    assert RULES.content(b"\0\0\0\x18ftypmp42" + bytes(20), 201 * MB).name == "mp4"


# ---- chunks -------------------------------------------------------------------------------


def test_a_chunk_must_have_its_exact_size_and_the_last_one_the_rest() -> None:
    up = upload(size=20 * MB)  # 8 + 8 + 4
    assert machine.check_chunk(up, 0, 8 * MB, NOW) == 8 * MB
    assert machine.check_chunk(up, 2, 4 * MB, NOW) == 4 * MB
    wrong = raised(machine.check_chunk, up, 2, 8 * MB, NOW)
    assert (wrong.kind, wrong.extra) == (errors.WRONG_CHUNK_SIZE, {"expected_size": 4 * MB})
    assert wrong.detail == f"Chunk 2 must be exactly {4 * MB} bytes, not {8 * MB}."
    assert raised(machine.check_chunk, up, 1, None, NOW).kind == errors.LENGTH_REQUIRED
    for index in (-1, 3):
        out = raised(machine.check_chunk, up, index, 8 * MB, NOW)
        assert (out.kind, out.detail) == (errors.CHUNK_OUT_OF_RANGE, "Chunks are numbered 0 to 2.")


def test_an_open_upload_past_its_expiry_takes_no_chunk_before_the_sweep_marks_it() -> None:
    up = upload(expires_ms=NOW)
    assert raised(machine.check_chunk, up, 0, 8 * MB, NOW).kind == errors.UPLOAD_EXPIRED
    assert machine.check_chunk(up, 0, 8 * MB, NOW - 1) == 8 * MB


@pytest.mark.parametrize("state", [s for s in UploadState if s is not S.OPEN])
def test_an_upload_that_is_not_open_takes_no_chunk_and_says_its_state(state: UploadState) -> None:
    refused = raised(machine.check_chunk, upload(state), 0, 8 * MB, NOW)
    assert (refused.code, refused.kind.status) == ("upload_not_open", 409)
    assert refused.kind.title == f"The upload is {state.value}"
    assert refused.extra == {"state": state.value}


def test_a_chunk_body_must_be_whole_and_match_the_checksums_sent() -> None:
    data = b"chunk bytes"
    hasher = ChunkHasher(sha256=True)
    for piece in (data[:4], data[4:]):
        hasher.update(piece)
    got = hasher.digests()
    assert got == Digests(
        base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode(),
        base64.b64encode(hashlib.sha256(data).digest()).decode(),
    )
    machine.check_body(0, len(data), len(data), got, got)
    machine.check_body(0, len(data), len(data), Digests(), got)
    short = raised(machine.check_body, 0, len(data), 3, Digests(), got)
    assert (short.kind, short.code) == (errors.CHUNK_ENDED_EARLY, "wrong_chunk_size")
    bad_crc = raised(machine.check_body, 4, len(data), len(data), Digests(crc32c="x"), got)
    assert (bad_crc.kind, bad_crc.errors[0].field) == (
        errors.CHUNK_CHECKSUM_MISMATCH,
        "Content-Digest",
    )
    assert "crc32c of chunk 4" in (bad_crc.detail or "")
    bad_sha = raised(machine.check_body, 4, len(data), len(data), Digests(sha256="x"), got)
    assert "sha-256 of chunk 4" in (bad_sha.detail or "")


def test_the_sha256_is_computed_only_when_one_was_sent() -> None:
    hasher = ChunkHasher(sha256=False)
    hasher.update(b"abc")
    assert hasher.digests().sha256 is None
    assert hasher.digests().crc32c is not None


@pytest.mark.parametrize(
    ("content_digest", "crc_header", "expected"),
    [
        (None, None, Digests()),
        (None, " q5JHuQ== ", Digests(crc32c="q5JHuQ==")),
        ("sha-256=:c2hh:, crc32c=:Y3Jj:", None, Digests("Y3Jj", "c2hh")),
        ("SHA-256=:c2hh:", "Y3Jj", Digests("Y3Jj", "c2hh")),
        ("md5=:bWQ1:, garbage", None, Digests()),
    ],
)
def test_digest_headers(
    content_digest: str | None, crc_header: str | None, expected: Digests
) -> None:
    assert parse_digest_headers(content_digest, crc_header) == expected


# ---- completion ---------------------------------------------------------------------------


def test_a_complete_claims_an_upload_with_every_chunk_and_answers_a_completed_one() -> None:
    assert machine.completion(upload(arrived=(0, 1, 2)), NOW) is Completion.CLAIM
    # Completing: claimed by another; the claim's own condition decides whether it is taken over.
    assert machine.completion(upload(S.COMPLETING, arrived=(0, 1, 2)), NOW) is Completion.CLAIM
    assert machine.completion(upload(S.COMPLETED), NOW) is Completion.DONE


def test_a_complete_with_chunks_missing_names_them() -> None:
    missing = raised(machine.completion, upload(arrived=(1,)), NOW)
    assert (missing.kind, missing.extra) == (errors.MISSING_CHUNKS, {"missing": [0, 2]})
    # The list is capped; the count in the detail is not.
    big = upload(size=2000 * MB, chunk_size=1 * MB, arrived=(5,))
    capped = raised(machine.completion, big, NOW)
    assert capped.extra["missing"] == [i for i in range(1001) if i != 5]
    assert (capped.detail or "").startswith("1999 chunk(s) missing")


def test_a_complete_of_an_ended_or_expired_upload_is_refused() -> None:
    assert raised(machine.completion, upload(arrived=(0, 1, 2), expires_ms=NOW), NOW).kind == (
        errors.UPLOAD_EXPIRED
    )
    for state, kind in ((S.ABORTED, errors.NOT_OPEN_ABORTED), (S.EXPIRED, errors.NOT_OPEN_EXPIRED)):
        assert raised(machine.completion, upload(state, arrived=(0, 1, 2)), NOW).kind == kind


def test_a_failed_upload_answers_its_failure_again() -> None:
    first = errors.FILE_CHECKSUM_MISMATCH.error("The assembled file differs.")
    failure = machine.failure_of(first)
    assert failure == UploadFailure(
        status=422, code="checksum_mismatch", detail="The assembled file differs."
    )
    failed = upload(S.FAILED, error=failure.model_dump())
    again = raised(machine.completion, failed, NOW)
    assert (again.kind.status, again.code, again.kind.title, again.detail) == (
        422,
        "checksum_mismatch",
        "The upload failed",
        "The assembled file differs.",
    )
    # An error without a detail keeps its title as the detail.
    assert machine.failure_of(errors.EVENT_ARCHIVED.error()).detail == "The event is archived"


def test_a_failed_record_without_its_error_still_answers_a_failure() -> None:
    for failed in (upload(S.FAILED), upload(S.FAILED, error={"code": "photo_cap_exceeded"})):
        again = raised(machine.completion, failed, NOW)
        assert again.kind.status == 409
        assert again.kind.title == "The upload failed"
    assert raised(machine.completion, upload(S.FAILED), NOW).kind == errors.UPLOAD_FAILED


# ---- cancel -------------------------------------------------------------------------------


def test_cancel_is_repeatable_but_refused_for_an_upload_that_moved_on() -> None:
    assert machine.cancel_refusal(S.ABORTED) is None
    completed = machine.cancel_refusal(S.COMPLETED)
    assert completed is not None
    assert (completed.kind, completed.detail) == (
        errors.NOT_OPEN_COMPLETED,
        "Only an open upload can be cancelled.",
    )
    # Read as open, but the cancelling write found it otherwise.
    moved = machine.cancel_refusal(S.OPEN)
    assert moved is not None
    assert moved.kind == errors.NO_LONGER_OPEN


# ---- the record and its view --------------------------------------------------------------


def test_the_record_reads_chunks_by_number_and_ignores_fields_it_does_not_own() -> None:
    up = upload(
        size=12 * MB,
        chunk_size=1 * MB,
        arrived=(10, 2, 9),
        lease_until_ms=NOW,
        lease_holder="lease_x",
        head=b"\xff\xd8",
    )
    assert [i for i, _ in up.received()] == [2, 9, 10]
    assert up.missing() == [0, 1, 3, 4, 5, 6, 7, 8, 11]
    assert up.received_bytes == 3 * MB
    assert up.chunk(9) == chunk(1 * MB)
    assert up.chunk(0) is None
    stored = up.document()
    assert (stored["_id"], stored["state"], stored["head"]) == ("up_1", "open", b"\xff\xd8")
    assert "lease_holder" not in stored
    assert UploadRecord.of(stored) == up


def test_upload_out_is_the_api_answer_from_a_document_or_a_record() -> None:
    up = upload(S.FAILED, arrived=(1,), error={"status": 400, "code": "x", "detail": "d"})
    out = upload_out(up.document(), "https://api.example")
    assert upload_out(up, "https://api.example") == out
    assert out == {
        "upload_id": "up_1",
        "protocol": "chunked",
        "event_id": "ev_1",
        "filename": "big.jpg",
        "size": 20 * MB,
        "mime_type": "image/jpeg",
        "chunk_size": 8 * MB,
        "chunk_count": 3,
        "state": "failed",
        "expires_at": out["expires_at"],
        "received_bytes": 8 * MB,
        "chunks": [{"index": 1, "size": 8 * MB, "crc32c": "AAAAAA==", "sha256": None}],
        "missing": [0, 2],
        "photo_id": "ph_1",
        "duplicate_of": None,
        "error": {"status": 400, "code": "x", "detail": "d"},
        "status_url": "https://api.example/v1/uploads/up_1",
    }
    assert out["expires_at"].startswith("2027-01-15T")


# ---- the error catalogue ------------------------------------------------------------------


def test_the_catalogue_holds_every_kind_declared_in_errors_once() -> None:
    """It is collected at the end of the module: a kind declared after that line is missing."""
    declared = {v for v in vars(errors).values() if isinstance(v, ErrorKind)}
    assert set(errors.CATALOGUE) == declared
    assert len(errors.CATALOGUE) == len(declared)
    assert set(errors.UPLOAD_NOT_OPEN) <= declared
    pairs = [(k.code, k.title) for k in errors.CATALOGUE]
    assert len(pairs) == len(set(pairs))

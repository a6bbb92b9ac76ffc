"""Every error upload-ingest's business layer raises, one :class:`ErrorKind` each.

The codes, statuses and titles are the API's answers as clients know them. A code that comes with
several titles (``wrong_chunk_size``, ``unsupported_type``, ``checksum_mismatch``,
``photo_cap_exceeded``, ``upload_not_open``) is one kind per title, since the title is part of
the kind; clients act on the code.

``CATALOGUE`` is every module-level kind of this module, collected at its end, so a kind is
declared once and belongs to it; declare new ones above that line.
"""

from __future__ import annotations

from darkroom_kit.errors import ErrorKind, not_found_kind

# ---- not found (shared) -----------------------------------------------------------------------

UPLOAD_NOT_FOUND = not_found_kind("upload")
EVENT_NOT_FOUND = not_found_kind("event")
PHOTO_NOT_FOUND = not_found_kind("photo")

# ---- photo commits (photos.py) ----------------------------------------------------------------

EVENT_ARCHIVED = ErrorKind("event_archived", 409, "The event is archived")
# Before any byte is sent: the event is full already.
PHOTO_CAP_REACHED = ErrorKind("photo_cap_exceeded", 400, "The event's photo cap is reached")
# When the photos are counted in: this batch does not fit.
PHOTO_CAP_WOULD_BE_EXCEEDED = ErrorKind(
    "photo_cap_exceeded", 400, "The event's photo cap would be exceeded"
)

# ---- batch uploads (uploads.py) ---------------------------------------------------------------

BODY_TOO_LARGE = ErrorKind("body_too_large", 413, "The batch is too large")
NESTED_MULTIPART = ErrorKind("nested_multipart", 400, "Nested multipart is not supported")
MALFORMED_MULTIPART = ErrorKind("malformed_multipart", 400, "The multipart body is not valid")

# ---- chunked uploads: creation (chunked/) ------------------------------------------------------

INVALID_FILENAME = ErrorKind("invalid_filename", 422, "The file name is not accepted")
UNSUPPORTED_TYPE = ErrorKind("unsupported_type", 422, "This type is not accepted")
FILE_TOO_LARGE = ErrorKind("file_too_large", 413, "The file is too large")

# ---- chunked uploads: chunks (chunked/) --------------------------------------------------------

UPLOAD_EXPIRED = ErrorKind("upload_expired", 410, "The upload has expired")
# ``upload_not_open``, one per state it is refused in (the title names the state).
NOT_OPEN_COMPLETING = ErrorKind("upload_not_open", 409, "The upload is completing")
NOT_OPEN_COMPLETED = ErrorKind("upload_not_open", 409, "The upload is completed")
NOT_OPEN_FAILED = ErrorKind("upload_not_open", 409, "The upload is failed")
NOT_OPEN_ABORTED = ErrorKind("upload_not_open", 409, "The upload is aborted")
NOT_OPEN_EXPIRED = ErrorKind("upload_not_open", 409, "The upload is expired")
# Its state changed between the read and the write (a chunk's, a cancel's).
NO_LONGER_OPEN = ErrorKind("upload_not_open", 409, "The upload is no longer open")
# Every ``upload_not_open``, for a route that lists what it may answer.
UPLOAD_NOT_OPEN = (
    NOT_OPEN_COMPLETING,
    NOT_OPEN_COMPLETED,
    NOT_OPEN_FAILED,
    NOT_OPEN_ABORTED,
    NOT_OPEN_EXPIRED,
    NO_LONGER_OPEN,
)
CHUNK_OUT_OF_RANGE = ErrorKind("chunk_out_of_range", 404, "No such chunk")
LENGTH_REQUIRED = ErrorKind("length_required", 411, "Send Content-Length")
WRONG_CHUNK_SIZE = ErrorKind("wrong_chunk_size", 400, "The chunk has the wrong size")
CHUNK_ENDED_EARLY = ErrorKind("wrong_chunk_size", 400, "The chunk ended early")
CHUNK_CHECKSUM_MISMATCH = ErrorKind("checksum_mismatch", 400, "The chunk's checksum does not match")

# ---- chunked uploads: completion (chunked/) ----------------------------------------------------

MISSING_CHUNKS = ErrorKind("missing_chunks", 409, "Some chunks have not arrived")
COMPLETE_IN_PROGRESS = ErrorKind("complete_in_progress", 503, "Completion is still in progress")
UNSUPPORTED_CONTENT = ErrorKind("unsupported_type", 422, "The content is not an accepted type")
FILE_CHECKSUM_MISMATCH = ErrorKind("checksum_mismatch", 422, "The file's SHA-256 does not match")
# A failed upload answers its failure again, under this title with the code and status that
# failed it (one of the kinds above); this code itself only for a record that lost them.
UPLOAD_FAILED = ErrorKind("upload_failed", 409, "The upload failed")

# ---- tus 1.0 (tus/) ---------------------------------------------------------------------------

TUS_VERSION_UNSUPPORTED = ErrorKind(
    "tus_version_unsupported", 412, "This tus version is not supported"
)
TUS_INVALID_HEADER = ErrorKind("invalid_header", 400, "A tus header is not valid")
TUS_EVENT_REQUIRED = ErrorKind("event_required", 400, "Upload-Metadata names no event")
TUS_CONTENT_TYPE = ErrorKind(
    "unsupported_media_type", 415, "A PATCH body is application/offset+octet-stream"
)
TUS_OFFSET_MISMATCH = ErrorKind("offset_mismatch", 409, "Upload-Offset is not the upload's offset")
TUS_UPLOAD_LOCKED = ErrorKind("upload_locked", 423, "Another request is writing to this upload")
TUS_SIZE_EXCEEDED = ErrorKind("size_exceeded", 413, "The bytes go past the upload's length")
# 460 is tus's own status for a checksum mismatch (the checksum extension).
TUS_CHECKSUM_MISMATCH = ErrorKind("checksum_mismatch", 460, "The piece's checksum does not match")
TUS_CHECKSUM_UNSUPPORTED = ErrorKind(
    "checksum_algorithm_unsupported", 400, "The checksum algorithm is not supported"
)
TUS_UPLOAD_GONE = ErrorKind("upload_gone", 410, "The upload is over")
TUS_FINAL_TAKES_NO_BYTES = ErrorKind("final_upload", 403, "A final upload takes no bytes")
# A chunk or complete of the chunk API sent to a tus upload.
WRONG_PROTOCOL = ErrorKind("wrong_protocol", 409, "The upload is a tus upload")
TUS_PARTIAL_UNFINISHED = ErrorKind("partial_unfinished", 400, "A partial upload is not finished")

# ---- guest upload links (guests.py) ----------------------------------------------------------

GUEST_LINK_NOT_FOUND = not_found_kind("guest_link")
GUEST_LIMIT_REACHED = ErrorKind("guest_limit_reached", 403, "The link's limit is reached")
PAGE_ASSET_MISSING = ErrorKind("page_asset_missing", 404, "No such file of the page")

# ---- direct uploads (direct/) -----------------------------------------------------------------

DIRECT_PUT_TOO_LARGE = ErrorKind("use_multipart", 413, "The file is too large for one signed PUT")
NOT_MULTIPART = ErrorKind("not_multipart", 409, "The upload is one signed PUT, not multipart")
INVALID_PART_NUMBER = ErrorKind("invalid_part_number", 400, "Parts are numbered 1 to 10,000")
PARTS_MISMATCH = ErrorKind("parts_mismatch", 409, "The parts differ from those S3 holds")
# Completed before S3 holds a byte of it: the upload stays open, send the bytes and complete again.
NOTHING_UPLOADED = ErrorKind("nothing_uploaded", 409, "S3 holds nothing of the upload yet")
SIZE_MISMATCH = ErrorKind("size_mismatch", 422, "The file's size is not the one declared")
TRUNCATED_FILE = ErrorKind("truncated_file", 422, "The file ends early")
# A chunk or tus request for an upload whose bytes go straight to S3.
DIRECT_ONLY = ErrorKind("wrong_protocol", 409, "The upload's bytes go straight to S3")

VALIDATION_FAILED = ErrorKind("validation_failed", 422, "The request is not valid")
INSUFFICIENT_SCOPE = ErrorKind("insufficient_scope", 403, "The token lacks a scope")
EVENT_BOUND_TOKEN = ErrorKind("event_bound_token", 403, "A token bound to one event cannot do this")

# ---- events, photos, serving, webhooks, operations (the API's services) -----------------------

# events
SLUG_TAKEN = ErrorKind("slug_taken", 409, "The slug is taken")
PHOTO_CAP_BELOW_COUNT = ErrorKind("photo_cap_below_count", 409, "The cap is below the photos held")

# photos
UNKNOWN_CATEGORY = ErrorKind("unknown_category", 422, "Unknown category")
NO_VALID_FILES = ErrorKind("no_valid_files", 400, "No file of the batch could be stored")
TOO_MANY_PARTS = ErrorKind("too_many_parts", 413, "The batch has too many parts")
TOO_MANY_BODIES = ErrorKind("server_busy", 503, "Too many uploads arrive at once")
BODY_TIMEOUT = ErrorKind("body_timeout", 408, "The body stopped arriving")
UNSUPPORTED_MEDIA_TYPE = ErrorKind("unsupported_media_type", 415, "Unsupported media type")
IDEMPOTENCY_KEY_IN_USE = ErrorKind(
    "idempotency_key_in_use", 409, "Another request with this key took over"
)

# serving
VARIANT_UNAVAILABLE = ErrorKind("variant_unavailable", 404, "No variant for this photo")
THUMBNAIL_PROCESSING = ErrorKind("thumbnail_processing", 404, "The thumbnail is not ready yet")
HERO_PROCESSING = ErrorKind("hero_processing", 404, "The hero is not ready yet")
# Signed media links: one answer for every way a link can be wrong (altered, cut, another
# variant's or photo's signature, a retired key), so it tells nothing about the photo.
LINK_INVALID = ErrorKind("link_invalid", 403, "The link is not valid")
LINK_EXPIRED = ErrorKind("link_expired", 403, "The link has expired")

# uploads
INVALID_CHUNK_INDEX = ErrorKind("invalid_chunk_index", 400, "The chunk index is not a number")

# webhooks
WEBHOOK_NOT_FOUND = not_found_kind("webhook")
DELIVERY_NOT_FOUND = not_found_kind("delivery")
DELIVERY_IN_PROGRESS = ErrorKind(
    "delivery_in_progress", 409, "The delivery is still being attempted"
)

COMMAND_NOT_SENT = ErrorKind(
    "broker_unavailable", 503, "The message broker did not take the command"
)

# operations
OPERATION_NOT_FOUND = not_found_kind("operation")
OPERATION_NOT_CANCELLABLE = ErrorKind(
    "operation_not_cancellable", 409, "This kind of Operation cannot be stopped"
)

# archives (jobs.py)
ARCHIVE_NOT_FOUND = not_found_kind("archive")
ARCHIVE_OUTDATED = ErrorKind(
    "archive_outdated", 410, "A photo in the archive was deleted or hidden since it was made"
)
EMPTY_SELECTION = ErrorKind("empty_selection", 422, "The archive would hold no photo")
PHOTO_NOT_IN_EVENT = ErrorKind("photo_not_in_event", 422, "A photo is not one of the event's")
ARCHIVE_IN_PROGRESS = ErrorKind(
    "archive_in_progress", 409, "Another archive of the event is being made"
)

# S3 prefix imports (imports.py)
IMPORT_SOURCE_NOT_FOUND = ErrorKind("import_source_not_found", 422, "No such import source")


# ---- the catalogue: keep it last ---------------------------------------------------------------
# Every kind above, each once (a kind bound to two names too). Collected rather than listed so
# that a new kind cannot be left out; a kind declared below this line would be, which a unit test
# (tests/unit/ingest/chunked/test_machine.py) catches. Not a module __getattr__: mypy would then
# accept any name imported from here.

CATALOGUE: tuple[ErrorKind, ...] = tuple(
    dict.fromkeys(v for v in list(globals().values()) if isinstance(v, ErrorKind))
)

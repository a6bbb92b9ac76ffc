"""Chunked, resumable uploads: chunk i is S3 multipart part i+1.

Chunks arrive in any order and in parallel; re-sending one replaces it (never a 409). Each chunk is
checked (size, optional CRC32C / SHA-256) before it is kept. The upload's record in MongoDB says
which chunks arrived, so a client resumes after any crash, including the API's. Completion is a
compare-and-swap on the record: concurrent or repeated completes create one photo and all get it.
Uploads not completed in time are aborted by a sweep (well inside MinIO's own 24 h purge).

As tusd splits its protocol handler from its data store: ``machine`` holds the states and rules
(no IO, no protocol), ``store`` the MongoDB records, ``parts`` the S3 multipart upload,
``service`` the use cases over them, ``digests`` and ``views`` the chunk API's checksums and
answers.
"""

from darkroom_ingest.chunked.digests import Digests, parse_digest_headers
from darkroom_ingest.chunked.machine import ABANDONED_COMPLETE_MS, MAX_PARTS, STALE_COMPLETING_MS
from darkroom_ingest.chunked.service import ChunkedUploads
from darkroom_ingest.chunked.store import UPLOADS
from darkroom_ingest.chunked.views import upload_out

__all__ = [
    "ABANDONED_COMPLETE_MS",
    "MAX_PARTS",
    "STALE_COMPLETING_MS",
    "UPLOADS",
    "ChunkedUploads",
    "Digests",
    "parse_digest_headers",
    "upload_out",
]

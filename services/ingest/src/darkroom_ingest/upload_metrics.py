"""``uploads_total``: each file that arrived, by how it came and whether it was taken.

One increment per file, where its protocol settles it: a batch's files once the batch is
answered (batches.py), a chunked, tus or direct upload when its completion ends
(chunked/service.py), an imported object once its batch is recorded (imports.py). A file the
server found stored already (a duplicate) is accepted; a refused one carries the problem code it
was refused with. Refusals before any file arrived (a chunked upload refused at creation, a batch
of an archived event) are not files and are counted only as HTTP answers.
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import CollectorRegistry, Counter

Protocol = Literal["batch", "chunked", "tus", "direct", "import"]

ACCEPTED = "accepted"
REFUSED = "refused"


class UploadMetrics:
    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self._uploads = Counter(
            "uploads_total",
            "Files that arrived, by protocol and outcome (accepted; refused, with the code why)",
            ["service", "protocol", "outcome", "code"],
            registry=registry,
        )
        self._service = service

    def accepted(self, protocol: Protocol, files: int = 1) -> None:
        if files > 0:
            self._uploads.labels(self._service, protocol, ACCEPTED, "").inc(files)

    def refused(self, protocol: Protocol, code: str, files: int = 1) -> None:
        if files > 0:
            self._uploads.labels(self._service, protocol, REFUSED, code).inc(files)

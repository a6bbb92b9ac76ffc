"""thumbnailing's own metrics, next to the consumer's (``messages_consumed_total`` and the rest)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

# The reason of a rendered photo (a label has a value on every series).
NO_REASON = "none"


class ThumbnailMetrics:
    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.thumbnails = Counter(
            "thumbnails_total",
            "Photos thumbnailing finished with: rendered, or refused for a reason of the file "
            "(the photo's status_reason: too_many_pixels, corrupt_image, unsupported_format, ...)",
            ["service", "outcome", "reason"],
            registry=registry,
        )
        self.service = service

    def rendered(self) -> None:
        self.thumbnails.labels(self.service, "rendered", NO_REASON).inc()

    def refused(self, reason: str) -> None:
        self.thumbnails.labels(self.service, "refused", reason).inc()

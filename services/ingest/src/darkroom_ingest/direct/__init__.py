"""Direct uploads: the client sends a file's bytes straight to S3 with URLs the API signed, so
they never pass through the API; the API then completes it from what S3 holds.

A ticket is an upload record (``protocol="direct"``, the same collection and state machine as
chunked and tus uploads) bound to one event, one declared size and type, and one object key the
API chose. ``objects`` signs the requests a client may make and reads back what S3 holds;
``service`` holds the use cases. Completion is the chunked one (``ChunkedUploads.complete``):
claimed under a lease, the photo made exactly once, counted against the event's cap and
announced through the outbox.

This package's ``__init__`` imports nothing: ``chunked`` uses ``direct.objects``, and
``direct.service`` uses ``chunked``.
"""

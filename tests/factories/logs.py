"""Log lines as a service writes them, captured for a test."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

from darkroom_kit.logs import configure_logging


@contextlib.contextmanager
def captured_log_lines(service: str) -> Iterator[io.StringIO]:
    """The process's logging configured as ``service``'s (JSON lines) into a buffer, and put
    back as it was afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    configure_logging(service, "INFO", as_json=True, stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:], root.level = saved


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]

"""The hot folder's stop on Ctrl-C and SIGTERM, with and without loop signal handlers."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest
from darkroom_client.watch import stop_on_signals

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture
def handlers_restored() -> Iterator[None]:
    """The process's handlers as they were after; meanwhile a signal nothing took is ignored,
    so a handler that was not installed fails the test rather than ending the run."""
    saved = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, lambda *_: None)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", SIGNALS, ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("loop_handlers", [True, False], ids=["loop", "no-loop-handlers"])
async def test_a_signal_stops_the_watcher(
    sig: signal.Signals,
    loop_handlers: bool,
    monkeypatch: pytest.MonkeyPatch,
    handlers_restored: None,
) -> None:
    """Where the loop has signal handlers they are used; where it has none (Windows' loops
    raise NotImplementedError) the plain handler wakes the loop from the signal."""
    loop = asyncio.get_running_loop()
    if not loop_handlers:

        def refuse(*_: object) -> None:
            raise NotImplementedError

        monkeypatch.setattr(loop, "add_signal_handler", refuse)
    stop = asyncio.Event()
    stop_on_signals(loop, stop)
    assert not stop.is_set()
    os.kill(os.getpid(), sig)
    await asyncio.wait_for(stop.wait(), 5)
    if loop_handlers:
        loop.remove_signal_handler(sig)

"""``darkroom-watch DIR --event SLUG``: a hot folder. Every media file that appears in DIR (or
below it) is uploaded once it has stopped changing, as tethered shooting and card readers write
a file in pieces; files there when it starts go too, unless uploaded before.

It is the upload client's own upload, file by file, so the same resume state keeps a restart
from sending a file twice, and a file the server could not take while it was away is tried
again later. Changes come from watchfiles (inotify, FSEvents, ReadDirectoryChangesW); a file is
taken once its size and mtime have held for ``--settle`` seconds.

The same command is ``darkroom watch`` where the server's CLI is installed too."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from watchfiles import Change, awatch

from darkroom_client.cli import add_connection_arguments, client_from_args
from darkroom_client.client import (
    MEDIA_TYPES,
    DarkroomClient,
    UploadError,
    find_media,
    is_excluded,
)

# What tethering tools, browsers and editors write before the real file: never a photo.
TEMPORARY = ("*.tmp", "*.part", "*.partial", "*.crdownload", "*.download", "~*", ".*")
# A file the server could not take (it was away, or said no for now) is tried again this late.
RETRY_SECONDS = 30.0


@dataclass
class Pending:
    """A file seen changing: its last size and mtime, and since when they have held."""

    size: int
    mtime_ns: int
    since: float
    not_before: float = 0.0  # a failed try: not again before this (monotonic)


@dataclass
class Counts:
    waiting: int = 0
    sending: int = 0
    done: int = 0
    failed: int = 0
    reasons: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"waiting {self.waiting}, sending {self.sending}, done {self.done}, "
            f"failed {self.failed}"
        )


class HotFolder:
    def __init__(
        self,
        client: DarkroomClient,
        event_id: str,
        folder: Path,
        *,
        settle_seconds: float = 2.0,
        exclude: Iterable[str] = (),
        say: Callable[[str], None] = print,
    ) -> None:
        self._client = client
        self._event_id = event_id
        self._folder = folder
        self._settle = settle_seconds
        self._exclude = [*TEMPORARY, *exclude]
        self._say = say
        self._pending: dict[Path, Pending] = {}
        self._sending: set[Path] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.counts = Counts()
        self._last_line = ""

    def _is_media(self, path: Path) -> bool:
        return (
            path.suffix.lower() in MEDIA_TYPES
            and self._folder in path.parents
            and not is_excluded(path, self._exclude, self._folder)
            and path.is_file()
        )

    def _see(self, path: Path) -> None:
        try:
            stat = path.stat()
        except OSError:
            self._pending.pop(path, None)  # gone again (a temporary file renamed away)
            return
        known = self._pending.get(path)
        if known is None or (known.size, known.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            self._pending[path] = Pending(
                stat.st_size,
                stat.st_mtime_ns,
                time.monotonic(),
                known.not_before if known else 0.0,
            )

    def _settled(self) -> list[Path]:
        now = time.monotonic()
        ready = []
        for path, known in list(self._pending.items()):
            if path in self._sending or known.not_before > now:
                continue
            self._see(path)  # a change the watcher has not told yet counts too
            again = self._pending.get(path)
            if again is not None and now - again.since >= self._settle and again.size > 0:
                ready.append(path)
        return ready

    async def _send(self, path: Path) -> None:
        self._sending.add(path)
        known = self._pending.get(path)
        sent_as = (known.size, known.mtime_ns) if known is not None else None
        reason = ""
        try:
            result = await self._client.upload(self._event_id, [path])
        except Exception as exc:  # whatever it was, the file is tried again later
            result = None
            reason = str(exc) or type(exc).__name__
        finally:
            self._sending.discard(path)
        if result is not None and str(path) in result.failed:
            reason = result.failed[str(path)]
        elif result is not None:
            now = self._pending.get(path)
            if now is not None and (now.size, now.mtime_ns) == sent_as:
                self._pending.pop(path, None)
            # else: it changed while it was sent; the new version goes once it settles.
            self.counts.done += 1
            if self.counts.reasons.pop(str(path), None) is not None:
                self.counts.failed -= 1
            if str(path) in result.skipped:
                what = "already there"
            elif str(path) in result.duplicates:
                what = f"duplicate of {result.duplicates[str(path)]}"
            else:
                what = "uploaded"
            self._say(f"{what}: {path}")
            return
        known = self._pending.get(path)
        if known is not None:
            known.not_before = time.monotonic() + RETRY_SECONDS
        if str(path) not in self.counts.reasons:
            self.counts.failed += 1
        self.counts.reasons[str(path)] = reason
        self._say(f"failed (again in {RETRY_SECONDS:.0f} s): {path}: {reason}")

    def _status(self) -> None:
        self.counts.waiting = len(self._pending) - len(self._sending)
        self.counts.sending = len(self._sending)
        line = self.counts.line()
        if line != self._last_line:
            self._last_line = line
            self._say(line)

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set (then what is being sent finishes) or the folder is gone."""
        for path in find_media([self._folder], self._exclude):
            self._see(path)

        gone: list[UploadError] = []

        async def tick() -> None:
            while not stop.is_set():
                if not self._folder.is_dir():
                    # Unmounted or removed: the watcher may hear nothing of it.
                    gone.append(UploadError(f"the watched folder {self._folder} is gone"))
                    stop.set()
                    break
                for path in self._settled():
                    task = asyncio.create_task(self._send(path))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                self._status()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.1, min(0.5, self._settle / 2)))

        ticker = asyncio.create_task(tick())
        try:
            async for changes in awatch(self._folder, stop_event=stop, recursive=True):
                for change, raw in changes:
                    path = Path(raw)
                    if change is Change.deleted:
                        self._pending.pop(path, None)
                    elif path.is_dir():
                        # A folder moved or copied in: its files come with no event of their own.
                        for found in find_media([path], self._exclude):
                            if self._is_media(found):
                                self._see(found)
                    elif self._is_media(path):
                        self._see(path)
                if not self._folder.is_dir():
                    raise UploadError(f"the watched folder {self._folder} is gone")
        finally:
            stop.set()
            await ticker
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self._status()
        if gone:
            raise gone[0]


def build_parser(prog: str = "darkroom-watch") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="a hot folder: upload every new photo or video in a folder"
    )
    parser.add_argument("folder", type=Path, help="the folder to watch (and its subfolders)")
    add_connection_arguments(parser)
    parser.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds a file's size and mtime must hold before it goes (default 2)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out files whose name or path matches (shell-style; repeatable); "
        "temporary and hidden files (*.tmp, *.part, .*) are always left out",
    )
    return parser


def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Ctrl-C and SIGTERM set ``stop``: the watcher ends what it is sending, then exits."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:
            # Event loops without signal handlers (Windows'): the plain handler wakes the loop.
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))


async def run(args: argparse.Namespace, prog: str = "darkroom-watch") -> int:
    if not args.token:
        print(f"{prog}: no token: pass --token or set DARKROOM_TOKEN", file=sys.stderr)
        return 2
    folder = args.folder.resolve()
    if not folder.is_dir():
        print(f"{prog}: {args.folder} is not a folder", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    stop_on_signals(asyncio.get_running_loop(), stop)

    def say(text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)

    async with client_from_args(args, say) as client:
        event_id = await client.event_id(args.event)
        say(f"watching {folder} for event {event_id} (Ctrl-C to stop)")
        watcher = HotFolder(
            client, event_id, folder, settle_seconds=args.settle, exclude=args.exclude, say=say
        )
        try:
            await watcher.run(stop)
        except UploadError as exc:
            say(str(exc))
            return 1
    return 0 if not watcher.counts.reasons else 1


def main(argv: list[str] | None = None, prog: str = "darkroom-watch") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return asyncio.run(run(args, prog))
    except Exception as exc:  # a clear message instead of a traceback for the photographer
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

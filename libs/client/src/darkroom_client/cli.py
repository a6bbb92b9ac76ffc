"""``darkroom-upload PATH... --event SLUG``: upload photos and videos, resumably.

The same command is ``darkroom upload`` where the server's CLI is installed too."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from darkroom_client.client import DarkroomClient, default_state_file, find_media


class ProgressBar:
    """Total bytes, rate and ETA on one line, and a line for each file as it finishes. Called
    with bytes as they go on the wire (the rate counts only those) and, through
    ``already_there``, with bytes that need not go (files and chunks the server has)."""

    def __init__(self, sizes: dict[str, int], stream: object = sys.stderr) -> None:
        self._sizes = sizes
        self._done: dict[str, int] = dict.fromkeys(sizes, 0)
        self._total = sum(sizes.values()) or 1
        self._started = time.monotonic()
        self._stream = stream
        self._last_draw = 0.0
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._sent = 0

    def already_there(self, name: str, n: int) -> None:
        self._advance(name, n)

    def __call__(self, name: str, n: int) -> None:
        self._sent += n
        self._advance(name, n)

    def _advance(self, name: str, n: int) -> None:
        before = self._done.get(name, 0)
        self._done[name] = before + n
        size = self._sizes.get(name, 0)
        finished = before < size <= self._done[name]
        if finished:
            self._write(
                f"\r\033[K  sent  {name} ({_human(self._sizes[name])})\n"
                if self._tty
                else f"sent {name}\n"
            )
        now = time.monotonic()
        if finished or now - self._last_draw > (0.2 if self._tty else 5):
            self._last_draw = now
            self._draw(name)

    def _draw(self, current: str) -> None:
        done = sum(self._done.values())
        elapsed = max(1e-6, time.monotonic() - self._started)
        rate = self._sent / elapsed
        eta = (self._total - done) / rate if rate > 0 else 0
        share = min(1.0, done / self._total)
        file_share = min(1.0, self._done.get(current, 0) / max(1, self._sizes.get(current, 1)))
        bar = "#" * int(24 * share)
        line = (
            f"[{bar:24}] {share:4.0%} {_human(done)}/{_human(self._total)} "
            f"{_human(rate)}/s ETA {int(eta) // 60}:{int(eta) % 60:02d} | "
            f"{Path(current).name} {file_share:4.0%}"
        )
        self._write(f"\r\033[K{line}" if self._tty else f"{line}\n")

    def say(self, text: str) -> None:
        """A line of its own, above the bar on a terminal."""
        self._write(f"\r\033[K{text}\n" if self._tty else f"{text}\n")

    def close(self) -> None:
        if self._tty:
            self._write("\n")

    def _write(self, text: str) -> None:
        self._stream.write(text)  # type: ignore[attr-defined]
        self._stream.flush()  # type: ignore[attr-defined]


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _rate(text: str) -> float:
    units = {"k": 1e3, "m": 1e6, "g": 1e9}
    text = text.strip().lower().removesuffix("b/s").removesuffix("/s").removesuffix("b")
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every command of the client takes: where, as whom, how fast, how patient."""
    parser.add_argument("--event", required=True, help="the event's slug or id")
    parser.add_argument(
        "--url",
        default=os.environ.get("DARKROOM_URL", "http://127.0.0.1:8080"),
        help="the API's base URL (env DARKROOM_URL)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("DARKROOM_TOKEN"),
        help="an API token with photos.write (env DARKROOM_TOKEN)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=4,
        help="files at once, and batches and chunks in flight in all (default 4)",
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        help="where to keep what is needed to resume (default: env DARKROOM_STATE, else "
        f"{default_state_file()}: one file for every folder and server)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=8,
        help="tries after the first for a failed request, with backoff or as the server's "
        "Retry-After asks, before the file is given up on (default 8: about 90 s)",
    )
    parser.add_argument(
        "--limit-rate", type=_rate, default=None, help="at most this many bytes a second, e.g. 5M"
    )


def client_from_args(
    args: argparse.Namespace, say: Callable[[str], None], **callbacks: Any
) -> DarkroomClient:
    """The client the options of :func:`add_connection_arguments` describe, saying each retry
    (what failed, and when the next try goes) through ``say``."""

    def on_retry(what: str, wait: float, attempt: int, tries: int) -> None:
        say(f"{what}; try {attempt} of {tries} in {wait:.0f} s")

    return DarkroomClient(
        args.url,
        args.token,
        parallel=max(1, args.parallel),
        retries=max(0, args.retries),
        state_file=args.state,
        rate_limit=args.limit_rate,
        on_retry=on_retry,
        **callbacks,
    )


def build_parser(prog: str = "darkroom-upload") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="upload photos and videos to darkroom, resumably"
    )
    parser.add_argument("paths", nargs="+", help="files and folders (searched recursively)")
    add_connection_arguments(parser)
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out files whose name or path matches (shell-style, e.g. '*.tmp' or "
        "'rejects/*'; repeatable); macOS '._*' files are always left out",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="send nothing: list what would be sent, how many bytes, and what is there already",
    )
    return parser


async def run(args: argparse.Namespace, prog: str = "darkroom-upload") -> int:
    if not args.token:
        print(f"{prog}: no token: pass --token or set DARKROOM_TOKEN", file=sys.stderr)
        return 2
    files = find_media(args.paths, args.exclude)
    sizes = {str(f): f.stat().st_size for f in files if f.is_file()}
    progress = ProgressBar(sizes)
    async with client_from_args(
        args, progress.say, progress=progress, already_there=progress.already_there
    ) as client:
        if args.dry_run:
            plan = await client.plan(args.event, files)
            for path, n in sorted(plan.send.items()):
                partly = "" if n == sizes[path] else f" of {_human(sizes[path])}, resumed"
                print(f"send   {path} ({_human(n)}{partly})")
            for path in sorted(plan.there):
                print(f"there  {path}")
            for path, reason in sorted(plan.failed.items()):
                print(f"FAILED {path}: {reason}")
            print(
                f"would send {len(plan.send)} files, {_human(sum(plan.send.values()))}; "
                f"{len(plan.there)} already there ({_human(sum(plan.there.values()))}); "
                f"{len(plan.failed)} failed; event {plan.event_id}"
            )
            return 0 if not plan.failed else 1
        try:
            result = await client.upload(args.event, files)
        finally:
            progress.close()
    print(
        f"{len(result.uploaded)} uploaded, {len(result.skipped)} already there, "
        f"{len(result.duplicates)} duplicates of photos there, {len(result.failed)} failed",
        file=sys.stderr,
    )
    for path, reason in sorted(result.failed.items()):
        print(f"  FAILED {path}: {reason}", file=sys.stderr)
    return 0 if result.ok else 1


def main(argv: list[str] | None = None, prog: str = "darkroom-upload") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return asyncio.run(run(args, prog))
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a clear message instead of a traceback for the photographer
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""CPU seconds per process while another process is alive: where a benchmark's CPU went.

Run it next to a benchmark. It reads /proc every 2 s; from the first to the last reading in which
a process whose command line contains PATTERN was alive, it sums each command's CPU (user +
system) and prints the largest, so a service phase can be split into the service, its pool,
the stand-ins and the broker.

    python -m benchmarks.proc_cpu PATTERN SECONDS   # e.g. darkroom_repair.main 300
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.harness import cpu_seconds

Reading = dict[int, tuple[str, float]]


def read_all() -> Reading:
    found: Reading = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            found[int(entry.name)] = (command, sum(cpu_seconds(int(entry.name))))
        except (OSError, ValueError):
            continue  # gone while it was read
    return found


def label(command: str) -> str:
    words = command.split()
    return " ".join([os.path.basename(words[0]), *words[1:3]]) if words else "?"


def main() -> int:
    pattern, seconds = sys.argv[1], float(sys.argv[2])
    first: Reading | None = None
    last: Reading | None = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reading = read_all()
        # Its own command line holds the pattern too.
        if any(pattern in c and "benchmarks.proc_cpu" not in c for c, _ in reading.values()):
            first = first or reading
            last = reading
        elif first is not None:
            break  # the process is gone: the phase is over
        time.sleep(2)
    if first is None or last is None:
        print(f"no process matching {pattern!r} was seen")
        return 1
    spent: Counter[str] = Counter()
    for pid, (command, cpu) in last.items():
        spent[label(command)] += cpu - first.get(pid, (command, 0.0))[1]
    for name, cpu in spent.most_common(8):
        print(f"{cpu:8.1f} CPU-s  {name[:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

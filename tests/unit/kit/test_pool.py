"""The render pool with real worker processes: time limits kill, memory bounds hold."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
from darkroom_kit.pool import JobTimedOut, PoolRestarted, RenderPool


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def allocate(megabytes: int) -> int:
    return len(bytearray(megabytes * 2**20))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child not yet reaped is a zombie: dead for our purpose.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


async def test_a_job_past_its_time_limit_is_killed_and_the_pool_carries_on() -> None:
    pool = RenderPool(1)
    try:
        first_worker = await pool.run(30, sleep_then_pid, 0)
        started = time.monotonic()
        with pytest.raises(JobTimedOut):
            await pool.run(0.5, sleep_then_pid, 60)
        assert time.monotonic() - started < 5
        assert pool.restarts == 1
        for _ in range(100):  # killed at once; reaped within moments
            if not alive(first_worker):
                break
            await asyncio.sleep(0.05)
        assert not alive(first_worker)  # the stuck render does not keep its core
        assert await pool.run(30, sleep_then_pid, 0) != first_worker
    finally:
        await pool.close()


async def test_a_job_past_its_time_limit_does_not_fail_the_others_in_flight() -> None:
    """Only the stuck worker is killed: a render running next to it finishes normally."""
    pool = RenderPool(2)
    try:
        await asyncio.gather(*(pool.run(30, sleep_then_pid, 0) for _ in range(2)))
        other = asyncio.ensure_future(pool.run(30, sleep_then_pid, 2))
        await asyncio.sleep(0.3)
        with pytest.raises(JobTimedOut):
            await pool.run(0.3, sleep_then_pid, 60)
        assert await other > 0  # not PoolRestarted
        assert pool.restarts == 1
        assert await pool.run(30, sleep_then_pid, 0) > 0
    finally:
        await pool.close()


def die_mid_job() -> None:
    os._exit(3)


async def test_a_worker_that_dies_mid_job_fails_only_that_job_as_transient() -> None:
    pool = RenderPool(2)
    try:
        other = asyncio.ensure_future(pool.run(30, sleep_then_pid, 1))
        await asyncio.sleep(0.3)
        with pytest.raises(PoolRestarted):
            await pool.run(30, die_mid_job)
        assert await other > 0
        assert pool.restarts == 1
        assert await pool.run(30, sleep_then_pid, 0) > 0
    finally:
        await pool.close()


async def test_closing_the_pool_fails_the_jobs_still_running_as_transient() -> None:
    pool = RenderPool(1)
    job = asyncio.ensure_future(pool.run(30, sleep_then_pid, 60))
    await asyncio.sleep(1.0)
    started = time.monotonic()
    await pool.close()
    with pytest.raises(PoolRestarted):
        await asyncio.wait_for(job, 10)
    assert time.monotonic() - started < 10


async def test_the_memory_bound_holds_in_the_worker_only() -> None:
    pool = RenderPool(1, memory_limit_bytes=256 * 2**20)
    try:
        with pytest.raises(MemoryError):
            await pool.run(30, allocate, 512)
        assert await pool.run(30, allocate, 16) == 16 * 2**20
    finally:
        await pool.close()
    assert len(bytearray(512 * 2**20)) == 512 * 2**20  # the parent is not bounded


_ORPHAN_PARENT = """
import asyncio, multiprocessing, os, sys
from darkroom_kit.pool import RenderPool

async def main() -> None:
    pool = RenderPool(2)
    await asyncio.gather(*(pool.run(60, os.getpid) for _ in range(2)))
    print(" ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


async def test_workers_die_when_their_parent_is_killed() -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ORPHAN_PARENT, stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    line = await asyncio.wait_for(parent.stdout.readline(), 60)
    workers = [int(pid) for pid in line.split()]
    try:
        assert len(workers) == 2
        assert all(alive(pid) for pid in workers)
        parent.kill()  # SIGKILL: no cleanup code of the parent runs
        await parent.wait()
        for _ in range(100):
            if not any(alive(pid) for pid in workers):
                break
            await asyncio.sleep(0.1)
        assert not [pid for pid in workers if alive(pid)]
    finally:
        for pid in workers:  # left behind by a failure: still a pool worker, not a reused pid
            with contextlib.suppress(OSError):
                if b"multiprocessing" in _cmdline(pid):
                    os.kill(pid, signal.SIGKILL)


def test_a_worker_whose_parent_died_before_it_started_exits() -> None:
    # The parent died while the worker was starting: it was re-parented before the kernel could
    # be told to kill it with its parent.
    code = "import os, sys; from darkroom_kit.pool import _init_worker; "
    orphan = f"{code}_init_worker(None, 1); print('lived')"
    ran = subprocess.run(
        [sys.executable, "-c", orphan], capture_output=True, timeout=60, check=False
    )
    assert (ran.returncode, ran.stdout, ran.stderr) == (1, b"", b"")
    # With its parent there, it carries on.
    child = f"{code}_init_worker(None, os.getppid()); print('lived')"
    ran = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, timeout=60, check=False
    )
    assert (ran.returncode, ran.stdout) == (0, b"lived\n")


async def test_a_ctrl_c_to_the_process_group_does_not_kill_a_job() -> None:
    """SIGINT reaches every process of a terminal's group: the worker leaves it to its parent."""
    pool = RenderPool(1)
    try:
        worker = await pool.run(30, sleep_then_pid, 0)
        job = asyncio.ensure_future(pool.run(30, sleep_then_pid, 1.0))
        await asyncio.sleep(0.3)
        os.kill(worker, signal.SIGINT)
        assert await job == worker
    finally:
        await pool.close()

"""The process pool for CPU work (image decoding), with a time limit per job and a memory bound
per worker process.

A thread cannot be stopped, a process can: a job over its time limit has its worker killed and the
pool rebuilt, so a pathological file cannot hold a core for ever. Jobs that were running in the
same pool at that moment fail with :class:`PoolRestarted`, a transient error their callers retry.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, TypeVar

from aiohttp import web

from darkroom_kit.imaging import init_worker_process

log = logging.getLogger(__name__)

T = TypeVar("T")


class JobTimedOut(Exception):
    """The job ran past its time limit; its worker was killed."""


class PoolRestarted(Exception):
    """The pool was rebuilt under this job (another job timed out or a worker died): retry it."""


class RenderPool:
    def __init__(self, processes: int, memory_limit_bytes: int | None = None) -> None:
        self._processes = processes
        self._memory_limit = memory_limit_bytes
        self._pool = self._new_pool()
        self.restarts = 0

    @property
    def processes(self) -> int:
        return self._processes

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the parent runs an event loop and client threads that a fork would
        # copy in an undefined state.
        return ProcessPoolExecutor(
            max_workers=self._processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self._memory_limit, os.getpid()),
        )

    async def run(self, time_limit: float, fn: Callable[..., T], *args: Any) -> T:
        pool = self._pool
        future = asyncio.get_running_loop().run_in_executor(pool, partial(fn, *args))
        try:
            return await asyncio.wait_for(future, time_limit)
        except TimeoutError:
            self._restart(pool, "a job ran past its time limit")
            raise JobTimedOut(f"no result within {time_limit:g}s") from None
        except BrokenProcessPool as exc:
            self._restart(pool, "a worker process died")
            raise PoolRestarted(str(exc) or "the worker pool was rebuilt") from None

    def _restart(self, pool: ProcessPoolExecutor, why: str) -> None:
        if pool is not self._pool:
            return  # another job already rebuilt it
        log.warning("restarting the worker pool: %s", why)
        self.restarts += 1
        self._pool = self._new_pool()
        _kill(pool)
        pool.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Stop the workers at once (a job still running belongs to a message that was not
        acknowledged, so it is redelivered) and wait for the pool's threads off the event loop."""
        _kill(self._pool)
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)


def _kill(pool: ProcessPoolExecutor) -> None:
    # The executor has no public way to stop a running job: kill its processes.
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()


_PR_SET_PDEATHSIG = 1  # from linux/prctl.h


def _init_worker(memory_limit_bytes: int | None, parent_pid: int) -> None:
    # A terminal's Ctrl-C goes to the whole process group: the parent stops its workers (on
    # SIGTERM, as on SIGINT), so a worker that took it itself would only die mid-job with a
    # KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    init_worker_process(memory_limit_bytes)


def _die_with_parent(parent_pid: int) -> None:
    """A worker outlives a parent killed with SIGKILL (nothing closes its end of the job queue),
    holding memory and the render slots of a service that is gone. On Linux the kernel kills
    it when the parent dies. Strictly: when the parent's *thread* that spawned it exits; the
    executor spawns workers in ``submit``, that is on the event loop's thread, which lives as
    long as the service (Python 3.11 spawns from its manager thread only with
    ``max_tasks_per_child``, not used here). Elsewhere a thread polls the parent."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        libc = None
    prctl = getattr(libc, "prctl", None)
    armed = prctl is not None and prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    if not armed:
        threading.Thread(
            target=_watch_parent, args=(parent_pid,), name="parent-watch", daemon=True
        ).start()
    # The parent may have died between spawning this process and the line above; then this
    # process already has another parent and the signal will never come.
    if os.getppid() != parent_pid:
        os._exit(1)


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1)
    os._exit(1)


RENDER_POOL: web.AppKey[RenderPool] = web.AppKey("render_pool", RenderPool)


def pool_ctx(
    processes: int, memory_limit_bytes: int | None = None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        pool = RenderPool(processes, memory_limit_bytes)
        # Start every worker now (a spawned process takes a second to import libvips), so the
        # first photos do not wait and readiness means ready to render.
        await asyncio.gather(*(pool.run(60, os.getpid) for _ in range(processes)))
        app[RENDER_POOL] = pool
        try:
            yield
        finally:
            await pool.close()

    return ctx

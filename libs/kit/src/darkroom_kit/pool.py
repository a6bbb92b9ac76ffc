"""The process pool for CPU work (image decoding), with a time limit per job and a memory bound
per worker process.

A thread cannot be stopped, a process can: a job over its time limit has its worker killed and
replaced (pebble's ``ProcessPool`` with a per-task timeout), so a pathological file cannot hold a
core for ever. Only that worker goes: the other jobs running in the pool at that moment carry on.
A job whose worker dies under it (an allocation over the memory bound, a crash in libvips) fails
with :class:`PoolRestarted`, a transient error its caller retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from aiohttp import web
from pebble import ProcessExpired, ProcessPool

from darkroom_kit.imaging import init_worker_process

log = logging.getLogger(__name__)

T = TypeVar("T")


class JobTimedOut(Exception):
    """The job ran past its time limit; its worker was killed."""


class PoolRestarted(Exception):
    """The worker running this job died under it, or the pool was rebuilt or closed: retry it."""


class RenderPool:
    def __init__(self, processes: int, memory_limit_bytes: int | None = None) -> None:
        self._processes = processes
        self._memory_limit = memory_limit_bytes
        self._pool = self._new_pool()
        self._running: set[Future[Any]] = set()
        self.restarts = 0
        """Worker processes replaced: killed past a time limit, died mid-job, or a pool rebuilt."""

    @property
    def processes(self) -> int:
        return self._processes

    def _new_pool(self) -> ProcessPool:
        # spawn, not fork: the parent runs an event loop and client threads that a fork would
        # copy in an undefined state.
        return ProcessPool(
            max_workers=self._processes,
            context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self._memory_limit, os.getpid()),
        )

    async def run(self, time_limit: float, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker process. The time limit counts from the moment a worker
        takes the job (not while it waits for a free worker); past it, that worker is killed
        and the job fails with :class:`JobTimedOut`."""
        pool = self._live_pool()
        try:
            future = pool.schedule(fn, args=args, timeout=time_limit)
        except RuntimeError as exc:  # the pool broke between the check and now
            self._restart(pool, f"the pool is unusable: {exc}")
            raise PoolRestarted(str(exc)) from None
        self._running.add(future)
        try:
            # Cancelling this coroutine cancels the future: pebble stops the job's worker.
            return await asyncio.wrap_future(future)
        except TimeoutError as exc:
            if getattr(exc, "traceback", None) is not None:
                raise  # raised by the job itself (pebble attaches the remote traceback)
            self._replaced("a job ran past its time limit")
            raise JobTimedOut(f"no result within {time_limit:g}s") from None
        except ProcessExpired as exc:
            self._replaced(f"a worker process died mid-job (exit code {exc.exitcode})")
            raise PoolRestarted(f"the worker died (exit code {exc.exitcode})") from None
        except BrokenProcessPool as exc:
            self._restart(pool, "the pool broke")
            raise PoolRestarted(str(exc) or "the worker pool was rebuilt") from None
        finally:
            self._running.discard(future)

    def _live_pool(self) -> ProcessPool:
        # ``active`` starts the pool on first use (on this, the event loop's, thread) and is
        # false once pebble declared it broken (e.g. a worker died while no job was running).
        if not self._pool.active:
            self._restart(self._pool, "the pool broke")
        return self._pool

    def _replaced(self, why: str) -> None:
        log.warning("replacing a worker process: %s", why)
        self.restarts += 1

    def _restart(self, pool: ProcessPool, why: str) -> None:
        if pool is not self._pool:
            return  # another job already rebuilt it
        log.warning("restarting the worker pool: %s", why)
        self.restarts += 1
        self._pool = self._new_pool()
        pool.stop()  # type: ignore[no-untyped-call]  # pebble leaves it unannotated
        threading.Thread(target=pool.join, name="pool-stop", daemon=True).start()

    async def close(self) -> None:
        """Stop the workers at once (a job still running belongs to a message that was not
        acknowledged, so it is redelivered) and wait for the pool's threads off the event loop.
        A job still awaited fails with :class:`PoolRestarted`."""
        self._pool.stop()  # type: ignore[no-untyped-call]
        await asyncio.to_thread(self._pool.join)
        for future in list(self._running):
            with contextlib.suppress(InvalidStateError):
                future.set_exception(PoolRestarted("the worker pool was closed"))


_PR_SET_PDEATHSIG = 1  # from linux/prctl.h


def _init_worker(memory_limit_bytes: int | None, parent_pid: int) -> None:
    # A terminal's Ctrl-C goes to the whole process group: the parent stops its workers (on
    # SIGTERM, as on SIGINT), so a worker that took it itself would only die mid-job with a
    # KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # pebble stops a worker (past a job's time limit, at close) with SIGTERM, which its own
    # handler serves only between two bytecodes: a worker stuck inside libvips would hold its
    # core until pebble's SIGKILL seconds later. The worker has nothing to clean up: die at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent_pid)
    init_worker_process(memory_limit_bytes)


def _die_with_parent(parent_pid: int) -> None:
    """A worker outlives a parent killed with SIGKILL (nothing closes its end of the job queue),
    holding memory and the render slots of a service that is gone. On Linux the kernel kills
    it when the parent dies. Strictly: when the parent's *thread* that spawned it exits; pebble
    spawns the first workers on the thread that first uses the pool (the event loop's, which
    lives as long as the service) and their replacements on its pool-manager thread, which lives
    as long as the pool. Elsewhere a thread polls the parent."""
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

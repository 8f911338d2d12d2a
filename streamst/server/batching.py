"""The batching scheduler: every stream's chunks share the model through one worker that steps all streams with
a chunk ready as one batch (`streamst.batching.sessions.step_sessions`: stacked encoder states, batched greedy
decoding, per-stream policies).

Same interface as `streamst.server.scheduler.Scheduler` (`await push`, `await finish`, `close`). A round takes
one chunk from each waiting job (oldest first, at most `max_batch`, one job per stream), so a client that sends
a minute of audio at once gets one chunk per round like everyone else and never stalls the others. Jobs collect
while the worker is busy; an idle worker starts at once (or after `window_ms`, to gather a fuller batch). A job
whose caller has gone (disconnect: its task is cancelled) is dropped before its next chunk, and the scheduler
keeps no reference to its session, so the stream's state is freed at once.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamst.batching.sessions import step_sessions
from streamst.server.scheduler import merge_chunks


@dataclass(eq=False)
class _Job:
    session: Any
    chunks: deque  # (audio, final) still to run
    future: asyncio.Future
    finishing: bool
    submitted: float
    started: bool = False
    events: list = field(default_factory=list)


class BatchingScheduler:
    """`await push(session, pcm)` -> events; `await finish(session)` -> events; one worker thread, batched steps."""

    def __init__(self, torch_threads: int | None = None, max_batch: int = 32, window_ms: float = 0.0,
                 history: int = 10_000):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._torch_threads = torch_threads
        self.parallelism = 1  # for the capacity meter: one worker steps every stream
        self.max_batch, self.window_s = max_batch, window_ms / 1000.0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamst-batch", initializer=self._init_worker)
        self._jobs: list[_Job] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self.waits_ms: deque[float] = deque(maxlen=history)  # submission to the job's first chunk starting
        self.steps_ms: deque[float] = deque(maxlen=history)  # time each round ran
        self.batch_sizes: deque[int] = deque(maxlen=history)  # streams in each round

    def _init_worker(self) -> None:
        if self._torch_threads:
            import torch

            torch.set_num_threads(self._torch_threads)

    # ---- the interface the server uses

    async def push(self, session: Any, pcm: bytes | np.ndarray, merge: bool = False) -> list:
        """One piece of audio (`merge`: its chunks as one larger chunk, for a stream catching up); ValueError (bad
        audio) is raised here, before any state changes."""
        chunks = session.take_chunks(pcm)
        return await self._submit(session, merge_chunks(session, chunks) if merge else chunks, finishing=False)

    async def finish(self, session: Any) -> list:
        """End of stream: every word the policy still holds."""
        if session.finished:
            return []
        return await self._submit(session, session.take_final_chunks(), finishing=True)

    def close(self) -> None:
        """Stop the worker; waiting callers get CancelledError."""
        self._closed = True
        if self._task is not None and not self._task.done() and not self._task.get_loop().is_closed():
            self._task.cancel()
        for job in self._jobs:
            if not job.future.done() and not job.future.get_loop().is_closed():
                job.future.cancel()
        self._jobs.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    @property
    def pending(self) -> int:
        """Jobs waiting or running (at most one per open stream)."""
        return len(self._jobs)

    # ---- internals

    async def _submit(self, session: Any, chunks: list, finishing: bool) -> list:
        if self._closed:
            raise RuntimeError("scheduler is closed")
        if not chunks and not any(j.session is session for j in self._jobs):
            return []
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run())
        job = _Job(session, deque(chunks), loop.create_future(), finishing, time.perf_counter())
        self._jobs.append(job)
        self._wake.set()
        return await job.future  # a cancelled caller cancels the future: the job is dropped before its next chunk

    def _take(self) -> list[_Job]:
        """Oldest first, one job per session, at most max_batch; jobs whose caller left are forgotten here."""
        self._jobs = [j for j in self._jobs if not j.future.done()]
        batch: list[_Job] = []
        seen: set[int] = set()
        for job in self._jobs:
            if id(job.session) in seen:
                continue
            seen.add(id(job.session))
            if not job.chunks:  # an empty job queued behind another of its stream
                job.future.set_result(job.events)
                continue
            batch.append(job)
            if len(batch) == self.max_batch:
                break
        self._jobs = [j for j in self._jobs if not j.future.done()]
        return batch

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.window_s > 0:
                await asyncio.sleep(self.window_s)
            while await self._round():
                pass

    async def _round(self) -> bool:
        """One chunk of every waiting job as one batch; False when nothing was waiting. Its locals are the only
        references to the sessions, and they end with it."""
        batch = self._take()
        if not batch:
            return False
        now = time.perf_counter()
        for job in batch:
            if not job.started:
                job.started = True
                self.waits_ms.append((now - job.submitted) * 1000.0)
        rows = [(job.session, *job.chunks.popleft()) for job in batch]
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._pool, step_sessions, rows)
        except Exception as e:  # noqa: BLE001 - the worker itself failed: every job of the round hears it
            results = [e] * len(batch)
        self.steps_ms.append((time.perf_counter() - now) * 1000.0)
        self.batch_sizes.append(len(batch))
        for job, result in zip(batch, results):
            self._deliver(job, result)
        self._jobs = [j for j in self._jobs if not j.future.done()]
        return True

    def _deliver(self, job: _Job, result: Any) -> None:
        if job.future.done():  # the caller left while its chunk ran: drop the rest
            return
        if isinstance(result, BaseException):
            job.future.set_exception(result)
            return
        job.events += result
        if not job.chunks and job.finishing:
            job.chunks.extend(job.session.another_final_pass())
        if not job.chunks:
            if job.finishing:
                job.session.finished = True
            job.future.set_result(job.events)

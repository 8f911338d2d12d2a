"""Runs the model steps of every stream off the event loop, on worker threads that share one model, one
stream's step at a time (`streamst serve --scheduler threads`; the default is the batching scheduler in
`streamst.server.batching`, which stacks the states of several streams into one model call).

The interface is deliberately small (`push`, `finish`, `close`) so either scheduler serves the server. Each stream has at
most one step in flight (the server awaits it), so the queue holds at most one job per open stream: bounded
by `--max-streams`. Jobs run first come, first served, so a long stream cannot starve the others.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np


def merge_chunks(session: Any, chunks: list[tuple[np.ndarray, bool]]) -> list[tuple[np.ndarray, bool]]:
    """Pending chunks as one larger chunk: a lagging stream encodes them all and decodes once (catch-up)."""
    if len(chunks) <= 1:
        return chunks
    session.chunks += len(chunks) - 1  # policies that count chunks (wait-k, unit=chunk) still see each one read
    return [(np.concatenate([audio for audio, _ in chunks]), chunks[-1][1])]


def push_merged(session: Any, pcm: bytes | np.ndarray) -> list:
    """`session.push` with every chunk the piece completes run as one step."""
    from streamst.batching.sessions import step_sessions

    events: list = []
    for audio, final in merge_chunks(session, session.take_chunks(pcm)):
        result = step_sessions([(session, audio, final)])[0]
        if isinstance(result, BaseException):
            raise result
        events += result
    return events


class Scheduler:
    """`await push(session, pcm)` -> events; `await finish(session)` -> events. Torch releases the GIL."""

    def __init__(self, workers: int = 1, torch_threads: int | None = None, history: int = 10_000):
        self._torch_threads = torch_threads
        self.parallelism = min(workers, os.cpu_count() or 1)  # for the capacity meter: steps that run at once
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="streamst-step",
                                        initializer=self._init_worker)
        self.waits_ms: deque[float] = deque(maxlen=history)  # time each job waited for a worker
        self.steps_ms: deque[float] = deque(maxlen=history)  # time each job ran

    def _init_worker(self) -> None:
        if self._torch_threads:
            import torch

            torch.set_num_threads(self._torch_threads)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        submitted = time.perf_counter()

        def job() -> Any:
            started = time.perf_counter()
            self.waits_ms.append((started - submitted) * 1000.0)
            try:
                return fn(*args)
            finally:
                self.steps_ms.append((time.perf_counter() - started) * 1000.0)

        return await asyncio.get_running_loop().run_in_executor(self._pool, job)

    async def push(self, session: Any, pcm: bytes, merge: bool = False) -> list:
        """One piece of audio through `session.push` (`merge`: its chunks as one); ValueError (bad audio) propagates."""
        return await self._run(push_merged if merge else session.push, *((session, pcm) if merge else (pcm,)))

    async def finish(self, session: Any) -> list:
        """`session.finish()`: every word the policy still holds."""
        return await self._run(session.finish)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

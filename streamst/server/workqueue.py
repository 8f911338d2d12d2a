"""A stream's ordered work queue that never blocks the socket reader.

Audio between two other items (marker, config, eos) is kept as one growing buffer, so a client that sends
faster than the model runs costs one buffer, not a queue of frames; the protocol bounds that buffer in seconds
(`max_backlog_s`). Other items are bounded in number (`Limits.work_queue`). The worker takes the audio in
pieces of the size it asks for: a chunk when the stream keeps up, several seconds when it catches up, and then
across markers (a client that sends a marker after every piece must not stop catch-up): the markers it passes
come back with the audio, to be answered once that audio has gone through the model.
"""
from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from streamst.server.protocol import Audio, Marker


@dataclass(frozen=True)
class AudioRun:
    """Audio taken across markers (catch-up); `markers` lay within it, in order, and are answered after it."""

    pcm: bytes
    markers: list[Marker] = field(default_factory=list)


class WorkQueue:
    """FIFO of protocol work items; consecutive `Audio` items coalesce into one buffer."""

    def __init__(self, max_items: int):
        self.max_items = max_items
        self._items: deque[Any] = deque()  # bytearray (audio) or another work item
        self._others = 0
        self._ready = asyncio.Event()

    def put(self, item: Any) -> bool:
        """Queue an item (never waits); False when the bound on non-audio items is crossed."""
        if isinstance(item, Audio):
            if self._items and isinstance(self._items[-1], bytearray):
                self._items[-1] += item.pcm
            else:
                self._items.append(bytearray(item.pcm))
        else:
            if self._others >= self.max_items:
                return False
            self._items.append(item)
            self._others += 1
        self._ready.set()
        return True

    async def get(self, max_audio_bytes: int | Callable[[], int],
                  across_markers: bool | Callable[[], bool] = False) -> Any:
        """The next item; audio comes as `Audio` of at most `max_audio_bytes` (the rest stays at the head), or,
        `across_markers`, as an `AudioRun` of the audio and markers that follow one another up to that size. A
        callable is asked once an item is there (the size may depend on how far behind the stream is by then)."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        if callable(max_audio_bytes):
            max_audio_bytes = max_audio_bytes()
        if callable(across_markers):
            across_markers = across_markers()
        head = self._items[0]
        if not isinstance(head, bytearray):
            self._items.popleft()
            self._others -= 1
            return head
        if not across_markers:
            return Audio(self._take_audio(max_audio_bytes))
        pcm, markers = bytearray(), []
        while self._items and len(pcm) < max_audio_bytes:
            head = self._items[0]
            if isinstance(head, bytearray):
                pcm += self._take_audio(max_audio_bytes - len(pcm))
            elif isinstance(head, Marker):
                markers.append(self._items.popleft())
                self._others -= 1
            else:  # a config or eos: the run stops before it
                break
        return AudioRun(bytes(pcm), markers)

    def _take_audio(self, max_bytes: int) -> bytes:
        """At most `max_bytes` of the audio buffer at the head (which is removed once empty)."""
        head = self._items[0]
        if len(head) <= max_bytes:
            self._items.popleft()
            return bytes(head)
        piece = bytes(head[:max_bytes])
        del head[:max_bytes]
        return piece

    def __len__(self) -> int:
        return len(self._items)

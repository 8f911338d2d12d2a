"""A stream's ordered work queue that never blocks the socket reader.

Audio between two other items (marker, config, eos) is kept as one growing buffer, so a client that sends
faster than the model runs costs one buffer, not a queue of frames; the protocol bounds that buffer in seconds
(`max_backlog_s`). Other items are bounded in number (`Limits.work_queue`). The worker takes the audio in
pieces of the size it asks for: a chunk when the stream keeps up, several seconds when it catches up.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable

from streamst.server.protocol import Audio


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

    async def get(self, max_audio_bytes: int | Callable[[], int]) -> Any:
        """The next item; audio comes as `Audio` of at most `max_audio_bytes` (the rest stays at the head). A
        callable is asked once an item is there (the size may depend on how far behind the stream is by then)."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        if callable(max_audio_bytes):
            max_audio_bytes = max_audio_bytes()
        head = self._items[0]
        if not isinstance(head, bytearray):
            self._items.popleft()
            self._others -= 1
            return head
        if len(head) <= max_audio_bytes:
            self._items.popleft()
            return Audio(bytes(head))
        piece = bytes(head[:max_audio_bytes])
        del head[:max_audio_bytes]
        return Audio(piece)

    def __len__(self) -> int:
        return len(self._items)

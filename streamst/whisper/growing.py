"""`Growing`: a tensor that a stream's state extends chunk by chunk along one axis without copying what it holds.

A causal encoder's key/value caches and the decoder's cross-attention keys/values grow by a block every
chunk; `torch.cat` copied all of them each time (at 8 streams about as much time as the encoder's matrix
products). A `Growing` is an immutable view (`start`, `stop`) of storage with spare room: extending the newest
view writes the new part into that room and returns a longer view; extending an older one (a state that was
extended already: a branch) copies it first, so what a view holds never changes.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

MIN_ROOM = 64  # rows of room a new storage gets at least


class _Storage:
    """The rows, and how many of them the newest view covers (who may write after them)."""

    __slots__ = ("data", "filled")

    def __init__(self, data: Tensor, filled: int):
        self.data, self.filled = data, filled


@dataclass(frozen=True)
class Growing:
    """Rows [start, stop) of a storage along axis `dim`."""

    storage: _Storage
    start: int
    stop: int
    dim: int

    @staticmethod
    def of(x: Tensor, dim: int) -> Growing:
        """A view of all of x (no copy: the first extension moves it into storage with room)."""
        return Growing(_Storage(x, x.shape[dim]), 0, x.shape[dim], dim)

    @property
    def tensor(self) -> Tensor:
        return self.storage.data.narrow(self.dim, self.start, self.stop - self.start)

    def __len__(self) -> int:
        return self.stop - self.start

    def extend(self, new: Tensor) -> Growing:
        """This view followed by `new` (the same shape but along `dim`)."""
        n = new.shape[self.dim]
        storage, start, stop = self.storage, self.start, self.stop
        if storage.filled != stop or stop + n > storage.data.shape[self.dim]:
            size = max(2 * (stop - start + n), MIN_ROOM)
            shape = list(new.shape)
            shape[self.dim] = size
            data = new.new_empty(shape)
            data.narrow(self.dim, 0, stop - start).copy_(self.tensor)
            storage, start, stop = _Storage(data, stop - start), 0, stop - start
        storage.data.narrow(self.dim, stop, n).copy_(new)
        storage.filled = stop + n
        return Growing(storage, start, stop + n, self.dim)

    def drop_front(self, n: int) -> Growing:
        """Without its first n rows (the storage is shared: nothing is copied)."""
        return Growing(self.storage, min(self.start + n, self.stop), self.stop, self.dim)

"""The batching rule: frames from every stream into batches of up to `max_batch`, each leaving
when it is full or when its oldest frame has waited `max_wait_ms`; a failed batch goes back first.

Pure bookkeeping on a FIFO, no Ray: `pipeline.scheduler` runs it against the workers.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .protocol import FrameRecord


@dataclass
class Accepted:
    """A frame accepted for inference: its record (seq assigned, pixels a FrameRef) and its history."""
    record: FrameRecord
    ready_at: float     # monotonic seconds when it entered the batcher
    attempts: int = 0   # workers that died running it


class DynamicBatcher:
    """FIFO of frames that forms batches of up to `max_batch`, waiting at most `max_wait_s`."""

    def __init__(self, max_batch: int, max_wait_s: float):
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: deque[Accepted] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, item: Accepted) -> None:
        self._queue.append(item)

    def holds(self, stream: str) -> bool:
        """Whether a frame of `stream` is waiting."""
        return any(item.record.stream == stream for item in self._queue)

    def put_back(self, items: list[Accepted]) -> None:
        """Return a failed batch to the head of the queue, in its order, ready to leave at once."""
        for item in reversed(items):
            item.ready_at = float("-inf")
            self._queue.appendleft(item)

    def next_batch(self, now: float, flush: bool = False) -> list[Accepted] | None:
        """A batch if one is due at `now`: full, or its oldest frame waited max_wait_s, or `flush`
        (no more frames are coming soon); else None."""
        if not self._queue:
            return None
        due = len(self._queue) >= self.max_batch or now - self._queue[0].ready_at >= self.max_wait_s
        if not (due or flush):
            return None
        return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    def seconds_until_due(self, now: float) -> float | None:
        """How long until the head frame has waited max_wait_s; None when empty."""
        if not self._queue:
            return None
        return max(0.0, self._queue[0].ready_at + self.max_wait_s - now)

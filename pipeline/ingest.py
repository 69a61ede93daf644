"""Ingest: one Ray actor per stream reads its source and hands frames out through the object store.

A reader thread decodes frames into a small buffer; the scheduler takes them with `take()`, which
returns frame records (pipeline.protocol.FrameRecord) and, as a second return value, their pixels:
one (n, H, W, 3) array (or a list of (H, W, 3) arrays when the frames differ in size or block).
A task's return value is owned by the caller, so the pixels of frames taken outlive this actor:
the scheduler makes each record's pixels a handle into that object (workers.frames.FrameRef),
and a worker can still read them after the ingest crashed. Offline, the reader decodes `block`
consecutive frames (of one size) straight into one array, and a take of a whole block returns it
in one object (an object has a fixed cost besides the copy: one per batch instead of one per
frame); live, where most frames are dropped as stale, only the frames taken go into the store.

Ray restarts a crashed ingest actor (`sources.max_restarts`); the scheduler then calls
`resume()` with the first frame it has not accepted: offline the stream goes on from that frame
(files, folders and generated scenes are read up to it again), live the source is reopened and
the frames missed meanwhile are counted as dropped. Frames that cannot be decoded (damaged data)
are passed over; each such gap is reported once, in an event naming the frames and why.

- offline: the buffer holds at most `read_ahead` frames and the reader blocks when it is full, so
  memory stays bounded however slow inference is;
- live: the buffer keeps the newest `live_queue` frames; an older waiting frame is dropped and
  counted, and the count rides on the next frame taken (`dropped_before`). A camera or network
  stream that fails or ends is reopened with doubling back-off. Files, folders and generated
  scenes in a live run are read at their own frame rate, as a camera would deliver them.

Problems the operator should see (a stream lost, an unreadable file) come back from `take()` as
one-line `events`, so the driver reports them without Ray's log forwarding.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, replace

import numpy as np
import ray

from workers.frames import FrameRef

from .config import SourcesSection
from .protocol import FrameRecord
from .sources import FALLBACK_FPS, DecodedFrame, FrameSource, SourceError, SourceSpec, open_source


@dataclass
class _Decoded:
    """A frame in the reader's buffer; `take()` makes it a FrameRecord."""
    pixels: np.ndarray  # RGB (H, W, 3): offline a view of its slot in a block, live its own array
    height: int
    width: int
    pts: float
    frame_index: int
    captured_at: float  # Unix seconds when the frame was read
    decode_ms: float    # decoding, conversion to RGB and (offline) its share of the block's put


@dataclass
class Opened:
    """The answer of `open()`: the stream, what it holds, or why it does not run."""
    stream: str
    total: int | None                 # frames expected (offline, when known): for progress bars
    size: tuple[int, int] | None      # (height, width) of the first frame
    fps: float | None                 # the source's frame rate
    error: str | None = None          # one line naming the input; the stream does not run then


@dataclass
class Taken:
    """The first answer of `take()` (its second is the frames' pixels)."""
    frames: list[FrameRecord]         # seq not yet assigned; pixels None: frame i is item i of the second answer
    done: bool                        # no frame will follow
    error: str | None                 # why the stream ended early, or None
    events: list[str]                 # one-line notices since the last take()
    counts: dict | None = None        # with done: the stream's final `Ingest.counts()`


class Ingest:
    """Reads one stream; see the module docstring. `IngestActor` runs it as a Ray actor."""

    def __init__(self, spec: SourceSpec, options: SourcesSection, live: bool, block: int = 1):
        self.spec = spec
        self.options = options
        self.live = live
        self.block = block             # offline: frames per object-store object
        self._block: np.ndarray | None = None   # (block, H, W, 3) the reader decodes into
        self._gathered: list[_Decoded] = []     # frames in _block, not yet put
        self._paced = live and not spec.live
        self._capacity = options.live_queue if live else options.read_ahead
        self._buffer: deque[_Decoded] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._finished = False         # the reader is done; the buffer may still hold frames
        self._error: str | None = None
        self._events: list[str] = []
        self._read = 0                 # frames read from the source (taken + dropped + waiting)
        self._dropped = 0              # dropped in all
        self._dropped_pending = 0      # dropped since the last frame taken
        self._skipped = 0              # could not be decoded (damaged data), passed over
        self._start_index = 0          # after resume(): frames before this one were taken by the crashed actor
        self._source: FrameSource | None = None
        self._first: DecodedFrame | None = None
        self._next_index = 0           # where the reader starts: 0, or where resume() could seek to
        self._thread = threading.Thread(target=self._read_loop, name=f"ingest-{spec.stream_id}", daemon=True)

    def open(self) -> Opened:
        """Open the source and read its first frame."""
        try:
            self._source = self._open()
            self._first = self._source.read()
            if self._first is None:
                raise SourceError(f"{self.spec.uri}: no frames")
        except SourceError as error:
            if self._source is not None:
                self._source.close()
            return Opened(self.spec.stream_id, None, None, None, str(error))
        return Opened(self.spec.stream_id, self._expected_total(), self._first.rgb.shape[:2], self._source.fps)

    def start(self) -> None:
        """Start reading (after open() succeeded), once the rest of the pipeline is ready: a live
        stream read any earlier would only be dropped."""
        self._thread.start()

    def _open(self) -> FrameSource:
        return open_source(self.spec, self.options.folder_fps, self.options.open_timeout_s)

    def _expected_total(self) -> int | None:
        total = self._source.total
        if self.options.max_frames:
            total = min(total, self.options.max_frames) if total else self.options.max_frames
        return None if self.live else total

    def resume(self, first_index: int, counts: dict, last_captured_at: float | None) -> Opened:
        """Go on with a stream after this actor was restarted (see the module docstring).

        `first_index`: the first frame index the scheduler has not accepted; `counts`: {"read",
        "dropped"} as the scheduler counted them; `last_captured_at`: when the last frame it
        accepted was captured (live: the time since then, at the source's rate, is the frames missed).
        """
        try:
            self._source = self._open()
        except SourceError as error:
            if not (self.live and self.spec.live):
                return Opened(self.spec.stream_id, None, None, None, str(error))
            self._source = None  # a camera that is not back yet: the reader keeps trying
        missed = 0
        if self.live and last_captured_at is not None:
            fps = self._source.fps if self._source is not None else FALLBACK_FPS
            missed = max(0, round((time.time() - last_captured_at) * fps) - 1)
        self._read, self._dropped = counts["read"] + missed, counts["dropped"] + missed
        self._dropped_pending = missed
        self._start_index = first_index + missed
        if self.spec.live or (self._source is not None and self._source.seek(self._start_index)):
            self._next_index = self._start_index  # else the reader reads up to it again
        self._note(f"{self.spec.stream_id}: ingest restarted; resuming at frame {self._start_index}"
                   + (f" ({missed} missed meanwhile)" if missed else ""))
        self._thread.start()
        source = self._source
        return Opened(self.spec.stream_id, None, None, source.fps if source is not None else None)

    @ray.method(num_returns=2)
    def take(self, max_frames: int, timeout_s: float, fill_s: float = 0.0) -> tuple[Taken, object]:
        """Up to `max_frames` waiting frames, waiting at most `timeout_s` for the first and then
        at most `fill_s` more for the rest (offline, so that one call carries a whole batch
        instead of the single frame the reader has just finished). Two answers: the `Taken` and
        the frames' pixels (`pixels_of`), so that the caller owns the pixels."""
        with self._cond:
            self._cond.wait_for(lambda: self._buffer or self._finished or self._stopped, timeout_s)
            if self._buffer and fill_s > 0:
                enough = min(max_frames, self._capacity)
                self._cond.wait_for(lambda: len(self._buffer) >= enough or self._finished or self._stopped, fill_s)
            taken = [self._buffer.popleft() for _ in range(min(max_frames, len(self._buffer)))]
            dropped_before, self._dropped_pending = self._dropped_pending, 0
            done = (self._finished or self._stopped) and not self._buffer
            events, self._events = self._events, []
            self._cond.notify_all()
        frames = []
        for decoded in taken:
            frames.append(self._record(decoded, dropped_before))
            dropped_before = 0  # the drops happened before the first frame taken
        return Taken(frames, done, self._error if done else None, events, self.counts() if done else None), \
            pixels_of(taken)

    def _record(self, decoded: _Decoded, dropped_before: int) -> FrameRecord:
        return FrameRecord(self.spec.stream_id, None, decoded.frame_index, decoded.pts, decoded.captured_at,
                           None, decoded.width, decoded.height, dropped_before, {"decode": decoded.decode_ms})

    def stop(self) -> dict:
        """Stop reading (frames already waiting can still be taken); returns `counts()`."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        return self.counts()

    def counts(self) -> dict:
        """{"read": frames read from the source, "dropped": live frames dropped, "skipped": frames
        that could not be decoded}."""
        with self._cond:
            return {"read": self._read, "dropped": self._dropped, "skipped": self._skipped}

    def _read_loop(self) -> None:
        try:
            self._read_frames()
        except SourceError as error:
            self._error = str(error)
        except Exception as error:  # an unexpected decoder failure still ends the stream cleanly
            self._error = f"{self.spec.uri}: reading failed: {type(error).__name__}: {error}"
        finally:
            self._put_block()  # the frames decoded before the end (or the failure) still go out
            if self._source is not None:
                self._source.close()
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _read_frames(self) -> None:
        first_pts = start = None
        limit = self.options.max_frames
        index = self._next_index       # the source position of the next frame (frames passed over count)
        while not self._stopped and not (limit and index >= limit):
            began = time.perf_counter()
            if self._first is not None:  # read by open()
                frame, self._first = self._first, None
            elif self._source is None:   # resumed while the camera was away
                frame = None
            else:
                frame = self._source.read()
            if frame is None:
                if not (self.live and self.spec.live) or not self._reopen():
                    return
                continue
            index += frame.skipped
            if index < self._start_index:  # after resume(): read again up to where the stream stood
                index += 1
                continue
            if frame.skipped:
                self._passed_over(index - frame.skipped, index - 1, frame.skip_reason)
            if limit and index >= limit:
                return
            height, width = frame.rgb.shape[:2]
            decode_ms = (time.perf_counter() - began) * 1e3
            if self._paced:
                if start is None:
                    first_pts, start = frame.pts, time.monotonic()
                time.sleep(max(0.0, start + frame.pts - first_pts - time.monotonic()))
            item = _Decoded(frame.rgb, height, width, frame.pts, index, time.time(), decode_ms)
            index += 1
            if self.live:
                self._offer(item)
            else:
                self._gather(item)

    def _passed_over(self, first: int, last: int, reason: str | None) -> None:
        """Frames first..last could not be read: count them and say so, once."""
        with self._cond:
            self._skipped += last - first + 1
        frames = f"frame {first}" if first == last else f"frames {first}-{last}"
        self._note(f"{self.spec.stream_id}: {frames} {reason or 'could not be read'}, passed over")

    def _gather(self, item: _Decoded) -> None:
        """Offline: add a decoded frame to the block, put the block when it is full (or before a
        frame of another size), and offer the source the next slot to decode into."""
        shape = item.pixels.shape
        if self._block is None or self._block.shape[1:] != shape:
            self._put_block()
            self._block = np.empty((self.block,) + shape, np.uint8)
        slot = self._block[len(self._gathered)]
        if slot.ctypes.data != item.pixels.ctypes.data:  # not decoded in place (the first frame, a
            slot[...] = item.pixels                      # folder of images, generated scenes)
        self._gathered.append(item)
        if len(self._gathered) == self.block:
            self._put_block()
            self._block = np.empty((self.block,) + shape, np.uint8)
        self._source.decode_into(self._block[len(self._gathered)])

    def _put_block(self) -> None:
        """Offer the gathered frames, each a view of its slot in the block (taken as one object)."""
        if not self._gathered:
            return
        gathered, self._gathered = self._gathered, []
        for slot, item in enumerate(gathered):
            item.pixels = self._block[slot]
            self._offer(item)
        self._block = None  # the next frames go into a new block: these views stay valid until taken

    def _offer(self, decoded: _Decoded) -> None:
        """Put a frame in the buffer: offline waits for room, live drops the oldest waiting."""
        with self._cond:
            if self.live:
                if len(self._buffer) >= self._capacity:
                    self._buffer.popleft()
                    self._dropped += 1
                    self._dropped_pending += 1
            else:
                self._cond.wait_for(lambda: len(self._buffer) < self._capacity or self._stopped)
                if self._stopped:
                    return
            self._read += 1
            self._buffer.append(decoded)
            self._cond.notify_all()

    def _reopen(self) -> bool:
        """Reopen a live stream that ended or failed, backing off between tries; False if stopped."""
        if self._source is not None:
            self._source.close()
        self._source = None
        delay = self.options.reconnect_initial_s
        self._note(f"{self.spec.stream_id}: stream lost, reopening {self.spec.uri}")
        while True:
            with self._cond:
                if self._cond.wait_for(lambda: self._stopped, delay):
                    return False
            try:
                self._source = self._open()
            except SourceError as error:
                delay = min(2 * delay, self.options.reconnect_max_s)
                self._note(f"{self.spec.stream_id}: {error}; next try in {delay:.1f} s")
                continue
            self._note(f"{self.spec.stream_id}: stream reopened")
            return True

    def _note(self, event: str) -> None:
        with self._cond:
            self._events.append(event)


def pixels_of(taken: list[_Decoded]) -> np.ndarray | list[np.ndarray] | None:
    """The pixels of frames taken, as one object: frame i is item i. Consecutive slots of one
    block are that block's slice (one copy, into the object store, when returned); otherwise a
    list of the frames' arrays."""
    if not taken:
        return None
    first = taken[0].pixels
    base = first.base
    step = first.nbytes
    if isinstance(base, np.ndarray) and base.shape[1:] == first.shape and base.flags.c_contiguous and all(
            item.pixels.base is base for item in taken) and all(
            b.pixels.ctypes.data - a.pixels.ctypes.data == step for a, b in zip(taken, taken[1:])):
        start = (first.ctypes.data - base.ctypes.data) // step
        return base[start:start + len(taken)]
    return [item.pixels for item in taken]


def with_pixels(taken: Taken, pixels: ray.ObjectRef) -> list[FrameRecord]:
    """The records of `take()`'s first answer with their pixels: handles into its second."""
    return [replace(frame, pixels=FrameRef(pixels, index)) for index, frame in enumerate(taken.frames)]


# No CPU reserved: decoding is light next to inference and must not wait for a free core.
# Two concurrent calls, so that stop() gets through while take() waits for frames.
IngestActor = ray.remote(num_cpus=0, max_concurrency=2)(Ingest)

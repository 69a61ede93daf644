"""Scheduling: frames from every stream into dynamic batches, batches onto inference workers.

`pipeline.batching.DynamicBatcher` is the batching rule alone. `Scheduler` is the event loop
around it, on Ray refs:

    ingest actors ──take()──► accept (seq per stream) ──► DynamicBatcher ──► worker.infer()
         ▲ pulled only while there is room                                      │ results
         └───────────────────────────────────────── publish (any order) ◄──────┘

- Flow control is by pulling: offline, frames are taken while fewer than `max_in_flight` are
  accepted and unpublished (the readers block behind their small buffers); live, frames are
  taken only when a worker is free, so the frame taken is the newest the camera has.
- `seq` is assigned when a frame is accepted, so it is gap-free over published frames even
  though live streams drop frames before that point.
- A batch whose worker dies is re-run: Ray restarts a crashed worker and retries its batches
  there (`workers.max_restarts`, `workers.max_task_retries`), which the scheduler sees as a
  result from another process than the one it sent the batch to; a worker killed for good fails
  its batches, which go back to the head of the queue for another worker, and is probed before
  reuse. Both count as re-runs in the summary. The publisher drops a seq it has already sent,
  so every frame is published exactly once.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace

import ray
from ray.exceptions import RayActorError, RayTaskError

from models.errors import PipelineError
from workers.inference import BatchResult

from .batching import Accepted, DynamicBatcher
from .config import BatchingSection
from .ingest import Taken
from .metrics import RunStats

log = logging.getLogger(__name__)

# Constants of the loop's mechanics, not tunables: none changes what is published or how fast.
TAKE_TIMEOUT_S = 0.5       # an ingest's take() returns empty-handed after this, so the loop sees stops
POLL_S = 0.1               # the loop wakes at least this often to notice a stop request
MAX_ATTEMPTS = 3           # a frame whose batch killed this many workers is poison: the run stops
PUBLISH_BACKLOG = 64       # publish calls (one per batch) in flight before waiting: bounds memory only


def error_line(error: Exception) -> str:
    """The message of an exception raised inside an actor, without Ray's traceback around it."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(error).__name__
    name, sep, message = last.partition(": ")
    return message if sep and name.replace(".", "").isidentifier() else last


@dataclass
class StreamState:
    stream_id: str
    ingest: object                 # IngestActor handle
    next_seq: int = 0
    published: int = 0
    reading: bool = True           # more frames may come from the ingest
    ended: bool = False            # end_stream sent
    error: str | None = None


@dataclass
class WorkerState:
    handle: object                 # InferenceWorkerActor handle
    name: str
    pid: int                       # its process, as last seen (a restart changes it)
    batches: int = 0               # batches submitted and not returned
    alive: bool = True
    probing: bool = False          # after a failure: not used until ready() answers


@dataclass
class _Pending:
    kind: str                      # take | batch | probe
    stream: StreamState | None = None
    worker: WorkerState | None = None
    frames: list[Accepted] = field(default_factory=list)
    requested: int = 0
    pid: int | None = None         # batch: the worker's process when the batch was sent


class Scheduler:
    """Runs streams through workers to the publisher until every stream has ended (see module doc).

    `streams`: {stream id: IngestActor}; `workers`: {name: InferenceWorkerActor}, with their
    ready() answers in `placement`; `live_queue`: the sources section's, how many frames a live
    take() may carry; `keep_pixels`: records reach the publisher with their pixels (the overlay
    video or images on the wire need them), else without.
    """

    def __init__(self, streams: dict[str, object], workers: dict[str, object], placement: list[dict],
                 publisher, batching: BatchingSection, *, live: bool, live_queue: int, keep_pixels: bool,
                 stats: RunStats):
        pids = {answer["name"]: answer["pid"] for answer in placement}
        self.streams = {sid: StreamState(sid, handle) for sid, handle in streams.items()}
        self.workers = [WorkerState(handle, name, pids[name]) for name, handle in workers.items()]
        self.publisher = publisher
        self.live = live
        self.batcher = DynamicBatcher(batching.max_batch, batching.max_wait_ms / 1e3)
        self.max_in_flight = (batching.max_in_flight
                              or (batching.batches_per_worker + 1) * batching.max_batch * len(workers))
        self.worker_capacity = 1 if live else batching.batches_per_worker
        self.take_size = live_queue if live else batching.max_batch
        # Offline, a take() waits up to max_wait_ms for a whole batch, as the batcher would.
        self.take_fill_s = 0.0 if live else batching.max_wait_ms / 1e3
        self.keep_pixels = keep_pixels  # the publisher draws or sends the frames' pixels
        self.stats = stats
        self._pending: dict[object, _Pending] = {}
        self._publishing: list = []
        self._in_flight = 0            # accepted, not yet published
        self._stopping = False

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Until all streams ended. Setting `stop` takes no new frames, finishes those accepted,
        and ends every stream (EOS)."""
        while True:
            if stop.is_set() and not self._stopping:
                self._stop_reading()
            self._request_frames()
            self._dispatch()
            self._end_finished_streams()
            if all(s.ended for s in self.streams.values()):
                break
            if not self._pending:
                if not self.batcher:
                    raise PipelineError("scheduler stalled: streams open but no frame or call in flight")
                time.sleep(self._wait_timeout())  # a partial batch waits out max_wait_ms
                continue
            ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=self._wait_timeout())
            for ref in ready:
                self._handle(ref, self._pending.pop(ref))
        self._wait_for_publisher(len(self._publishing))

    def _wait_timeout(self) -> float:
        """Wake for the batcher's deadline if a worker could take the batch (else only a result
        can change anything: waking at an overdue deadline would spin and take a core from
        the workers), and often enough to notice a stop request."""
        due = self.batcher.seconds_until_due(time.monotonic()) if self._free_worker_slots() > 0 else None
        return POLL_S if due is None else min(due, POLL_S)

    def _stop_reading(self) -> None:
        self._stopping = True
        for stream in self.streams.values():
            stream.reading = False
            stream.ingest.stop.remote()

    # -- frames in --------------------------------------------------------------------------

    def _free_worker_slots(self) -> int:
        return sum(self.worker_capacity - w.batches for w in self.workers if w.alive and not w.probing)

    def _request_frames(self) -> None:
        requested = sum(p.requested for p in self._pending.values())
        for stream in self.streams.values():
            if not stream.reading or any(p.stream is stream for p in self._pending.values()):
                continue
            if self.live:
                room = self._free_worker_slots() > 0 and len(self.batcher) < self.batcher.max_batch
                wanted = self.take_size if room else 0
            else:
                wanted = min(self.take_size, self.max_in_flight - self._in_flight - requested)
            if wanted > 0:
                ref = stream.ingest.take.remote(wanted, TAKE_TIMEOUT_S, self.take_fill_s)
                self._pending[ref] = _Pending("take", stream=stream, requested=wanted)
                requested += wanted

    def _accept(self, stream: StreamState, taken: Taken) -> None:
        for event in taken.events:
            log.warning("%s", event)
        if self._stopping:
            return  # frames read after the stop are not published; they get no seq
        now = time.monotonic()
        for frame in taken.frames:
            self.batcher.add(Accepted(replace(frame, seq=stream.next_seq), now))
            stream.next_seq += 1
            self._in_flight += 1
            self.stats.accepted(stream.stream_id, frame.dropped_before)
        if taken.done:
            stream.reading = False
            stream.error = taken.error
            if stream.error:
                log.error("%s", stream.error)

    # -- batches out ------------------------------------------------------------------------

    def _dispatch(self) -> None:
        flush = self._stopping or not any(s.reading for s in self.streams.values())
        while self._free_worker_slots() > 0:
            batch = self.batcher.next_batch(time.monotonic(), flush=flush)
            if batch is None:
                return
            worker = min((w for w in self.workers if w.alive and not w.probing and w.batches < self.worker_capacity),
                         key=lambda w: w.batches)
            worker.batches += 1
            dispatched_at = time.time()
            for item in batch:
                queue_ms = (dispatched_at - item.record.captured_at) * 1e3
                item.record = replace(item.record, timing_ms={**item.record.timing_ms, "queue": queue_ms})
            ref = worker.handle.infer.remote([item.record.pixels for item in batch])
            self._pending[ref] = _Pending("batch", worker=worker, frames=batch, pid=worker.pid)

    def _handle(self, ref, pending: _Pending) -> None:
        if pending.kind == "take":
            try:
                self._accept(pending.stream, ray.get(ref))
            except RayActorError:
                pending.stream.reading = False
                pending.stream.error = f"{pending.stream.stream_id}: its ingest actor died"
                log.error("%s", pending.stream.error)
        elif pending.kind == "batch":
            pending.worker.batches -= 1
            try:
                result = ray.get(ref)
            except RayActorError:
                self._worker_failed(pending.worker, pending.frames)
            except RayTaskError as error:
                raise PipelineError(f"inference failed on {pending.worker.name}: {error_line(error)}") from None
            else:
                self._note_restart(pending, result)
                self._publish(pending.frames, result)
        else:
            pending.worker.probing = False
            try:
                ray.get(ref)
                log.warning("%s: restarted, back in service", pending.worker.name)
            except RayActorError:
                pending.worker.alive = False
                log.warning("%s: gone", pending.worker.name)
                if not any(w.alive for w in self.workers):
                    raise PipelineError("every inference worker died; nothing left to run the model") from None

    def _worker_failed(self, worker: WorkerState, frames: list[Accepted]) -> None:
        """Put the batch back for another worker; probe the failed one before using it again."""
        for item in frames:
            item.attempts += 1
            if item.attempts >= MAX_ATTEMPTS:
                raise PipelineError(f"{item.record.stream} frame {item.record.frame_index}: "
                                    f"its batch failed on {MAX_ATTEMPTS} workers")
        self.batcher.put_back(frames)
        self.stats.rerun()
        if worker.alive and not worker.probing:
            log.warning("%s: died with a batch of %d frames; re-running it", worker.name, len(frames))
            worker.probing = True
            self._pending[worker.handle.ready.remote()] = _Pending("probe", worker=worker)

    def _note_restart(self, pending: _Pending, result: BatchResult) -> None:
        """A result from another process than the one the batch was sent to: the worker died with
        the batch and Ray re-ran it on the restarted worker."""
        if result.pid == pending.pid:
            return
        self.stats.rerun()
        if result.pid != pending.worker.pid:
            log.warning("%s: restarted (pid %d, was %d); its batches re-ran there",
                        pending.worker.name, result.pid, pending.worker.pid)
            pending.worker.pid = result.pid

    # -- results out ------------------------------------------------------------------------

    def _publish(self, batch: list[Accepted], result: BatchResult) -> None:
        records = []
        for item, instances in zip(batch, result.instances):
            record = replace(item.record, timing_ms={**item.record.timing_ms, **result.timing_ms},
                             instances=instances,
                             pixels=item.record.pixels if self.keep_pixels else None)
            records.append(record)
            self.streams[record.stream].published += 1
            self._in_flight -= 1
            self.stats.published(record)
        self._publishing.append(self.publisher.publish_many.remote(records))  # one call per batch
        if len(self._publishing) > PUBLISH_BACKLOG:
            # Keeps memory bounded if the publisher falls behind.
            self._wait_for_publisher(len(self._publishing) // 2)

    def _wait_for_publisher(self, calls: int) -> None:
        """Wait for the oldest `calls` publisher calls; a publisher error stops the run in one line."""
        try:
            ray.get(self._publishing[:calls])
        except RayTaskError as error:
            raise PipelineError(f"publisher: {error_line(error)}") from None
        del self._publishing[:calls]

    def _end_finished_streams(self) -> None:
        for stream in self.streams.values():
            if not stream.ended and not stream.reading and stream.published == stream.next_seq \
                    and not any(p.stream is stream for p in self._pending.values()):
                self._publishing.append(self.publisher.end_stream.remote(stream.stream_id, stream.next_seq))
                stream.ended = True
                self.stats.ended(stream.stream_id, stream.next_seq)

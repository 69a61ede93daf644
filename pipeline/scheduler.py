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
- A batch whose worker dies is re-run: by default (`workers.max_task_retries` 0) its batches
  fail at once and go back to the head of the queue for any live worker, while Ray restarts the
  worker (`workers.max_restarts`), which is probed before reuse; so a lost node's batches run on
  the nodes left even if its workers' restarts cannot be placed. With retries, Ray re-runs them
  on the restarted worker, which the scheduler sees as a result from another process than the
  one it sent the batch to. Both count as re-runs in the summary. The publisher drops a seq it
  has already sent, so every frame is published exactly once.
- An ingest actor that dies is restarted by Ray (`sources.max_restarts`) and told to resume at
  the first frame not accepted; the frames already accepted are safe, since their pixels are
  take()'s return values, owned here. Once its restarts are used up its stream ends (EOS, reason
  `error`).
- The publisher's answers say which seqs are out; a record is kept here until they do, and a
  while longer: a message sent is still in the dead publisher's queues (ZeroMQ's, up to
  `publish.hwm`, and the kernel's) when it dies, so the last RESEND_MARGIN + hwm records of each
  stream are kept too (without their pixels; offline only: live, a frame lost there is a gap
  rather than a frame sent again late). When the publisher dies, Ray restarts it
  (`publish.max_restarts`), it is told to resume each stream at its oldest record kept here
  (`resume`), and those records are sent again: a consumer drops the frames it already has.
  With tracking, the publisher's answers also carry each stream's tracker as it stood before
  the first seq not yet sent; records are kept from a seq whose tracker is kept, and the
  restarted publisher gets that tracker back: the frames sent again get the same track ids. Offline, a publisher waiting for a slow subscriber holds its answers back, and
  the loop stops taking frames once PUBLISH_BACKLOG calls wait: back-pressure reaches the readers.
- Offline, at most `max_open` streams are read at once (`sources.max_open`: an archive of a
  thousand files is not a thousand ingest processes); the others wait in order and are opened
  as earlier ones finish reading. A stream's ingest actor is stopped once its last frame is
  taken (the frames' pixels are take()'s answers, owned here). So
  that a consumer that ends when every stream it has seen has ended (`maskstream consume`)
  sees them all, a stream's EOS waits while a stream has yet to get a frame out and no other
  stream with a frame out is still going (offline; live streams end when they end).
- Each stream's EOS says why it ended: `end`, `stopped` (the run was stopped) or `error` (its
  source failed, or its ingest died for good), with the problem in one line.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from models.errors import PipelineError
from workers.inference import BatchResult

from .batching import Accepted, DynamicBatcher
from .config import BatchingSection
from .ingest import Opened, Taken, with_pixels
from .metrics import RunStats
from .sources import SourceSpec

log = logging.getLogger(__name__)

# Constants of the loop's mechanics, not tunables: none changes what is published or how fast.
TAKE_TIMEOUT_S = 0.5       # an ingest's take() returns empty-handed after this, so the loop sees stops
POLL_S = 0.1               # the loop wakes at least this often to notice a stop request
MAX_ATTEMPTS = 3           # a frame whose batch killed this many workers is poison: the run stops
PUBLISH_BACKLOG = 64       # publish calls (one per batch) in flight before waiting: bounds memory only
RESEND_MARGIN = 256        # records kept beyond publish.hwm after they were sent: what kernel buffers may hold


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
    fps: float | None = None       # the source's frame rate (a restarted publisher reopens its files with it)
    next_index: int = 0            # the first frame index not accepted: where a restarted ingest resumes
    read: int = 0                  # frames read as seen here: accepted, and dropped before them
    dropped: int = 0
    last_captured_at: float | None = None
    restarts: int = 0              # of its ingest actor
    kept: dict = field(default_factory=dict)  # seq -> FrameRecord handed to the publisher: not yet sent, or lately
    kept_from: int = 0             # the records below this seq are no longer kept
    trackers: dict = field(default_factory=dict)  # with tracking: seq -> the publisher's tracker as it was before it
    confirmed: int = 0             # the first seq the publisher has not said it sent
    eos: tuple | None = None       # the end_stream arguments (frames, reason, error), once called
    eos_confirmed: bool = False
    counts: dict | None = None     # its ingest's final counts, from its last take() (its actor then stopped)


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
    kind: str                      # take | resume | batch | probe | open | announce
    stream: StreamState | None = None
    worker: WorkerState | None = None
    frames: list[Accepted] = field(default_factory=list)
    requested: int = 0
    pid: int | None = None         # batch: the worker's process when the batch was sent
    pixels: object = None          # take: the ObjectRef of the frames' pixels (take's second answer)
    spec: SourceSpec | None = None # open: the stream being opened
    ingest: object = None          # open: its new IngestActor


class Scheduler:
    """Runs streams through workers to the publisher until every stream has ended (see module doc).

    `streams`: {stream id: IngestActor}, opened and started; `workers`: {name:
    InferenceWorkerActor}, with their ready() answers in `placement`; `live_queue`: the sources
    section's, how many frames a live take() may carry; `keep_pixels`: records reach the publisher
    with their pixels (the overlay video or images on the wire need them), else without;
    `waiting`: the streams to open later, in order, with `new_ingest(spec)` (an IngestActor), as
    fewer than `max_open` streams are reading.
    """

    def __init__(self, streams: dict[str, object], workers: dict[str, object], placement: list[dict],
                 publisher, batching: BatchingSection, *, live: bool, live_queue: int, keep_pixels: bool,
                 stats: RunStats, stream_fps: dict[str, float] | None = None, endpoint: str | None = None,
                 ingest_restarts: int = 0, publisher_restarts: int = 0, publisher_hwm: int = 0,
                 waiting: list[SourceSpec] = (), new_ingest: Callable[[SourceSpec], object] | None = None,
                 max_open: int = 0):
        """`stream_fps`: each source's frame rate; `endpoint`: the one the publisher bound;
        `ingest_restarts`, `publisher_restarts`: how often Ray restarts those actors;
        `publisher_hwm`: its publish.hwm (see the module docstring)."""
        pids = {answer["name"]: answer["pid"] for answer in placement}
        self.streams = {sid: StreamState(sid, handle, fps=(stream_fps or {}).get(sid))
                        for sid, handle in streams.items()}
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
        self._publishing: list = []    # (ref, epoch) of publisher calls not answered yet, oldest first
        self._in_flight = 0            # accepted, not yet published
        self._stopping = False
        self.endpoint = endpoint
        self.ingest_restarts = ingest_restarts
        self.publisher_restarts = publisher_restarts
        self._publisher_epoch = 0      # one more at each publisher restart: older calls' failures are known
        self._publisher_incarnation = None
        self._subscriptions = 0        # as the publisher last said: a restarted one waits for them to come back
        self.peak_unsent = 0           # most frames accepted and not yet sent by the publisher, at any time
        # Live, a frame lost in a crashed publisher's queues is a gap, not sent again late.
        self.resend_window = 0 if live else publisher_hwm + RESEND_MARGIN
        self.waiting = deque(waiting)  # streams not opened yet, in order
        self.new_ingest = new_ingest
        self.max_open = max_open or len(streams) + len(self.waiting)
        self.open_errors: dict[str, str] = {}  # streams opened late whose source did not open
        self.not_started: list[str] = []       # streams still waiting when the run was stopped

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Until all streams ended. Setting `stop` takes no new frames, finishes those accepted,
        and ends every stream (EOS)."""
        while True:
            if stop.is_set() and not self._stopping:
                self._stop_reading()
            self._open_waiting()
            self._request_frames()
            self._dispatch()
            self._end_finished_streams()
            self._count_streams()
            if all(s.ended for s in self.streams.values()) and not self._more_to_come():
                break
            if not self._pending:
                if self._publishing and not self.batcher:
                    self._collect_publisher(1)  # a held EOS waits for another stream's frames to be out
                    continue
                if not self.batcher:
                    raise PipelineError("scheduler stalled: streams open but no frame or call in flight")
                time.sleep(self._wait_timeout())  # a partial batch waits out max_wait_ms
                continue
            ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=self._wait_timeout())
            for ref in ready:
                self._handle(ref, self._pending.pop(ref))
            self._collect_publisher()
        while self._publishing:
            self._collect_publisher(len(self._publishing))

    def _wait_timeout(self) -> float:
        """Wake for the batcher's deadline if a worker could take the batch (else only a result
        can change anything: waking at an overdue deadline would spin and take a core from
        the workers), and often enough to notice a stop request."""
        due = self.batcher.seconds_until_due(time.monotonic()) if self._free_worker_slots() > 0 else None
        return POLL_S if due is None else min(due, POLL_S)

    def _stop_reading(self) -> None:
        self._stopping = True
        self.not_started += [spec.stream_id for spec in self.waiting]
        self.waiting.clear()
        for stream in self.streams.values():
            if stream.reading:
                stream.reading = False
                stream.ingest.stop.remote()

    # -- streams opened as others finish (offline, sources.max_open) ---------------------------

    def _opening(self) -> int:
        return sum(p.kind == "open" for p in self._pending.values())

    def _reading(self) -> int:
        return sum(s.reading for s in self.streams.values())

    def _more_to_come(self) -> bool:
        return bool(self.waiting) or self._opening() > 0

    def _count_streams(self) -> None:
        reading = self._reading()
        self.stats.stream_states(len(self.waiting) + self._opening(), reading, len(self.streams) - reading)

    def _open_waiting(self) -> None:
        """Open waiting streams while fewer than max_open are reading or opening."""
        for _ in range(min(self.max_open - self._reading() - self._opening(), len(self.waiting))):
            spec = self.waiting.popleft()
            ingest = self.new_ingest(spec)
            self._pending[ingest.open.remote()] = _Pending("open", spec=spec, ingest=ingest)

    def _opened(self, pending: _Pending, ref) -> None:
        """A waiting stream's source opened (or not): it joins the run, or its error is noted."""
        sid = pending.spec.stream_id
        try:
            opened: Opened = ray.get(ref)
        except RayActorError as error:
            opened = Opened(sid, None, None, None, f"{sid}: its ingest actor died while opening ({error_line(error)})")
        if self._stopping or opened.error:
            ray.kill(pending.ingest)
            if opened.error:
                self.open_errors[sid] = opened.error
                log.error("%s", opened.error)
            else:
                self.not_started.append(sid)
            return
        # Calls to one actor run in the order made: the publisher opens the stream before its frames.
        self._pending[self.publisher.open_stream.remote(sid, opened.fps)] = _Pending("announce")
        pending.ingest.start.remote()
        self.streams[sid] = StreamState(sid, pending.ingest, fps=opened.fps)
        self.stats.add_stream(sid, opened.total)

    # -- frames in --------------------------------------------------------------------------

    def _free_worker_slots(self) -> int:
        return sum(self.worker_capacity - w.batches for w in self.workers if w.alive and not w.probing)

    def _request_frames(self) -> None:
        requested = sum(p.requested for p in self._pending.values())
        for stream in self.streams.values():
            if not stream.reading or any(p.stream is stream for p in self._pending.values()):
                continue
            if self.live:
                # Only while a worker is free and none of this stream's frames waits for one: a
                # frame taken now must not sit behind a batch being inferred (it would be
                # published a whole inference late, instead of a newer one).
                room = self._free_worker_slots() > 0 and len(self.batcher) < self.batcher.max_batch \
                    and not self.batcher.holds(stream.stream_id)
                wanted = self.take_size if room else 0
            else:
                wanted = min(self.take_size, self.max_in_flight - self._in_flight - requested)
            if wanted > 0:
                ref, pixels = stream.ingest.take.remote(wanted, TAKE_TIMEOUT_S, self.take_fill_s)
                self._pending[ref] = _Pending("take", stream=stream, requested=wanted, pixels=pixels)
                requested += wanted

    def _accept(self, stream: StreamState, taken: Taken, pixels) -> None:
        for event in taken.events:
            log.warning("%s", event)
        if self._stopping:
            return  # frames read after the stop are not published; they get no seq
        now = time.monotonic()
        for frame in with_pixels(taken, pixels):
            self.batcher.add(Accepted(replace(frame, seq=stream.next_seq), now))
            stream.next_seq += 1
            stream.next_index = frame.frame_index + 1
            stream.read += 1 + frame.dropped_before
            stream.dropped += frame.dropped_before
            stream.last_captured_at = frame.captured_at
            self._in_flight += 1
            self.stats.accepted(stream.stream_id, frame.dropped_before)
        self.peak_unsent = max(self.peak_unsent, sum(s.next_seq - s.confirmed for s in self.streams.values()))
        if taken.done:
            stream.reading = False
            stream.error = taken.error
            if stream.error:
                log.error("%s", stream.error)
            # Its frames' pixels are take()'s answers, owned here: the actor's process can go.
            stream.counts = taken.counts
            ray.kill(stream.ingest)

    # -- batches out ------------------------------------------------------------------------

    def _dispatch(self) -> None:
        # Live, frames are taken only for free workers: once no take is in flight no more can come
        # for the batch, so it leaves at once instead of waiting out max_wait_ms.
        flush = self._stopping or not any(s.reading for s in self.streams.values()) \
            or (self.live and not any(p.kind == "take" for p in self._pending.values()))
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
                taken = ray.get(ref)
            except RayActorError:
                self._ingest_lost(pending.stream)
            else:
                self._accept(pending.stream, taken, pending.pixels)
        elif pending.kind == "resume":
            self._ingest_resumed(pending.stream, ref)
        elif pending.kind == "open":
            self._opened(pending, ref)
        elif pending.kind == "announce":
            try:
                ray.get(ref)
            except RayTaskError as error:
                raise PipelineError(f"publisher: {error_line(error)}") from None
            except RayActorError:
                pass  # the publisher died: its restart opens every stream again (_recover_publisher)
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
            try:
                pending.worker.pid = ray.get(ref)["pid"]
                pending.worker.probing = False
                self.stats.restart("worker")
                log.warning("%s: restarted, back in service", pending.worker.name)
            except ActorUnavailableError:  # still restarting: ask again
                self._pending[pending.worker.handle.ready.remote()] = pending
            except RayActorError:
                pending.worker.probing = False
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
            self.stats.restart("worker")

    # -- ingest restarts --------------------------------------------------------------------

    def _ingest_lost(self, stream: StreamState) -> None:
        """Its ingest actor died: have the restarted one resume, or end the stream with the error."""
        if self._stopping or stream.restarts >= self.ingest_restarts:
            self._ingest_gone(stream)
            return
        stream.restarts += 1
        self.stats.restart("ingest")
        log.warning("%s: its ingest actor died; restarting it at frame %d", stream.stream_id, stream.next_index)
        self._resume_ingest(stream)

    def _resume_ingest(self, stream: StreamState) -> None:
        ref = stream.ingest.resume.remote(stream.next_index, {"read": stream.read, "dropped": stream.dropped},
                                          stream.last_captured_at)
        self._pending[ref] = _Pending("resume", stream=stream)

    def _ingest_gone(self, stream: StreamState) -> None:
        stream.reading = False
        stream.error = (f"{stream.stream_id}: its ingest actor died"
                        + (f" ({stream.restarts} restart(s) used up)" if self.ingest_restarts else ""))
        log.error("%s", stream.error)

    def _ingest_resumed(self, stream: StreamState, ref) -> None:
        try:
            opened = ray.get(ref)
        except ActorUnavailableError:  # still restarting: ask again
            self._resume_ingest(stream)
            return
        except RayActorError:
            self._ingest_gone(stream)
            return
        if opened.error:
            stream.reading = False
            stream.error = opened.error
            log.error("%s", stream.error)

    # -- results out ------------------------------------------------------------------------

    def _publish(self, batch: list[Accepted], result: BatchResult) -> None:
        records = []
        for item, instances in zip(batch, result.instances):
            record = replace(item.record, timing_ms={**item.record.timing_ms, **result.timing_ms},
                             instances=instances,
                             pixels=item.record.pixels if self.keep_pixels else None)
            records.append(record)
            stream = self.streams[record.stream]
            stream.published += 1
            stream.kept[record.seq] = record
            self._in_flight -= 1
            self.stats.published(record)
        self._call_publisher("publish_many", records)  # one call per batch
        # Keeps memory bounded if the publisher falls behind (offline: a slow subscriber).
        self._collect_publisher(len(self._publishing) - PUBLISH_BACKLOG)

    def _call_publisher(self, method: str, *args) -> None:
        self._publishing.append((getattr(self.publisher, method).remote(*args), self._publisher_epoch))

    def _collect_publisher(self, wait_for: int = 0) -> None:
        """Take in the publisher's answers that are there, waiting for the oldest `wait_for`."""
        while self._publishing:
            ref, epoch = self._publishing[0]
            if wait_for <= 0 and not ray.wait([ref], timeout=0)[0]:
                return
            del self._publishing[0]
            wait_for -= 1
            try:
                progress = ray.get(ref)
            except RayActorError:
                if epoch == self._publisher_epoch:
                    self._recover_publisher()
                continue
            except RayTaskError as error:
                raise PipelineError(f"publisher: {error_line(error)}") from None
            self._apply_progress(progress)
            restarted = progress["incarnation"] != self._publisher_incarnation or not progress["resumed"]
            if epoch == self._publisher_epoch and self._publisher_incarnation is not None and restarted:
                self._recover_publisher()  # it died between two calls: this one ran on its successor

    def _apply_progress(self, progress: dict) -> None:
        """What the publisher says is out: forget those records; log its notices."""
        if self._publisher_incarnation is None:
            self._publisher_incarnation = progress["incarnation"]
        for stream_id, (seq, tracker) in progress.get("trackers", {}).items():
            if stream_id in self.streams:
                self.streams[stream_id].trackers[seq] = tracker
        for stream_id, sent in progress["sent"].items():
            stream = self.streams.get(stream_id)
            if stream is None or sent <= stream.confirmed:
                continue
            limit = sent - self.resend_window
            if stream.trackers:  # tracking: keep from a seq whose tracker a restarted publisher can take up
                limit = max((seq for seq in stream.trackers if seq <= limit), default=0)
                for seq in [seq for seq in stream.trackers if seq < limit]:
                    del stream.trackers[seq]
            for seq in range(stream.kept_from, limit):
                stream.kept.pop(seq, None)
            stream.kept_from = max(stream.kept_from, limit)
            for seq in range(stream.confirmed, sent):  # sent: only a resend after a crash needs them, if any
                if seq in stream.kept and stream.kept[seq].pixels is not None:
                    stream.kept[seq] = replace(stream.kept[seq], pixels=None)
            stream.confirmed = sent
        for stream_id in progress["ended"]:
            if stream_id in self.streams:
                self.streams[stream_id].eos_confirmed = True
        for event in progress["events"]:
            log.warning("%s", event)
        self.stats.delivery(progress["delivery"])
        self.stats.zones(progress.get("zones", {}))
        if progress["resumed"]:
            self._subscriptions = progress["delivery"]["subscriptions"]
        unsent = sum(s.next_seq - s.confirmed for s in self.streams.values())
        self.peak_unsent = max(self.peak_unsent, unsent)

    def _recover_publisher(self) -> None:
        """The publisher died: have its restarted self resume where each stream stands, and send
        it again every record and end it had not confirmed."""
        self._publisher_epoch += 1
        self.stats.restart("publisher")
        if self._publisher_epoch > self.publisher_restarts:
            raise PipelineError(f"the publisher died {self._publisher_epoch} time(s); "
                                f"{self.publisher_restarts} restart(s) allowed (publish.max_restarts)")
        log.warning("publisher: died; restarting it and sending again what it had not confirmed sent")
        # An ended stream too: its EOS may have died in the publisher's queues (a consumer drops a repeat).
        state = {}
        for sid, s in self.streams.items():
            first = min(s.kept, default=s.confirmed)
            state[sid] = {"fps": s.fps, "next_seq": first, "tracker": s.trackers.get(first)}
        while True:
            try:
                progress = ray.get(self.publisher.resume.remote(self.endpoint, state, self._subscriptions))
                break
            except ActorUnavailableError:  # still restarting
                time.sleep(POLL_S)
            except RayActorError:
                raise PipelineError(f"the publisher died; its {self.publisher_restarts} restart(s) are used up "
                                    "(publish.max_restarts)") from None
            except RayTaskError as error:
                raise PipelineError(f"publisher: {error_line(error)}") from None
        self._publisher_incarnation = progress["incarnation"]
        self._apply_progress(progress)
        for stream in self.streams.values():
            stream.confirmed = min(stream.kept, default=stream.confirmed)
            stream.eos_confirmed = False
            records = [stream.kept[seq] for seq in sorted(stream.kept)]
            for start in range(0, len(records), self.batcher.max_batch):
                self._call_publisher("publish_many", records[start:start + self.batcher.max_batch])
            if stream.eos is not None and not stream.eos_confirmed:
                self._call_publisher("end_stream", stream.stream_id, *stream.eos)

    def _end_finished_streams(self) -> None:
        for stream in self.streams.values():
            if not stream.ended and not stream.reading and stream.published == stream.next_seq \
                    and not any(p.stream is stream for p in self._pending.values()) \
                    and not self._hold_eos(stream):
                reason = "error" if stream.error else "stopped" if self._stopping else "end"
                stream.eos = (stream.next_seq, reason, stream.error)
                self._call_publisher("end_stream", stream.stream_id, *stream.eos)
                stream.ended = True
                self.stats.ended(stream.stream_id, stream.next_seq)

    def _hold_eos(self, stream: StreamState) -> bool:
        """Whether `stream`'s EOS waits: a stream has yet to get a frame out (one waiting its turn,
        opening, or open with none sent yet) and no other stream has a frame out and its EOS to
        come. A consumer that ends when every stream it has seen has ended would stop before it.
        Offline only: a live camera may never get a frame out (reopened with back-off for ever),
        and the other streams' ends must not wait for it."""
        if self.live:
            return False
        others = [other for other in self.streams.values() if other is not stream and not other.ended]
        unseen = self._more_to_come() or any(other.confirmed == 0 for other in others)
        return unseen and not any(other.confirmed > 0 for other in others)

    # -- the run's account --------------------------------------------------------------------

    def errors(self) -> dict[str, str]:
        """{stream: the one-line problem} for streams that failed: to open (late), or while read."""
        return {**self.open_errors, **{s.stream_id: s.error for s in self.streams.values() if s.error}}

    def ingest_counts(self) -> dict[str, dict]:
        """{stream: its ingest's counts ("read", "dropped", "skipped")}: as the stream's last take
        said, else asked of its actor now, else (the actor gone) as seen here."""
        counts = {}
        for sid, stream in self.streams.items():
            counts[sid] = stream.counts
            if counts[sid] is None:
                try:
                    counts[sid] = ray.get(stream.ingest.counts.remote())
                except RayActorError:
                    counts[sid] = {"read": stream.read, "dropped": stream.dropped}
        return counts

"""The scheduler's own logic, apart from Ray: its wake-ups and the errors it reports.
(It runs for real, with actors, in test_pipeline_e2e.py.)"""
from pipeline.batching import Accepted
from pipeline.config import BatchingSection
from pipeline.scheduler import POLL_S, Scheduler, error_line
from tests.wire_helpers import make_record


def test_error_line_strips_ray_traceback():
    text = ("ray::InferenceWorker.infer() (pid=1, ip=1.2.3.4)\n  File \"x.py\", line 3, in infer\n"
            "    raise ValueError('bad')\nValueError: frame 3 has 2 channels\n")
    assert error_line(RuntimeError(text)) == "frame 3 has 2 channels"
    assert error_line(RuntimeError("plain message")) == "plain message"


def test_the_scheduler_sleeps_past_an_overdue_batch_while_every_worker_is_busy():
    """An overdue partial batch wakes the loop only when a worker could take it; with every
    worker busy the loop waits for a result (a timeout of 0 here would spin at 100% CPU)."""
    scheduler = Scheduler({}, {"w0": object()}, [{"name": "w0", "pid": 1}], publisher=None,
                          batching=BatchingSection(max_batch=4, max_wait_ms=10.0, batches_per_worker=2),
                          live=False, live_queue=1, keep_pixels=False, stats=None)
    assert scheduler.max_in_flight == 12              # max_in_flight 0: 3 batches per worker
    for seq in (0, 1):                                 # long overdue
        scheduler.batcher.add(Accepted(make_record("a", seq, instances=0), ready_at=0.0))
    assert scheduler._wait_timeout() == 0.0          # a worker slot is free: dispatch now
    scheduler.workers[0].batches = 2                  # both slots of the only worker taken
    assert scheduler._wait_timeout() == POLL_S


class TakeRecorder:
    """Stands in for an ingest actor's handle: records the take() calls the scheduler makes
    (take has two answers, the Taken and the pixels: IngestActor.take)."""

    def __init__(self):
        self.calls = []
        self.take = self

    def remote(self, *args):
        self.calls.append(args)
        return object(), object()


def test_live_takes_no_frame_while_one_of_its_stream_waits_and_sends_a_lone_frame_at_once():
    """Live, a frame taken while another of its stream waits would queue behind a whole inference
    and be published late (the live latency was 2-3 inference times); and with nothing more to
    take a partial batch leaves at once rather than after max_wait_ms."""
    ingest = {"a": TakeRecorder(), "b": TakeRecorder()}
    scheduler = Scheduler(ingest, {"w0": object()}, [{"name": "w0", "pid": 1}], publisher=None,
                          batching=BatchingSection(max_batch=4, max_wait_ms=10_000.0),
                          live=True, live_queue=1, keep_pixels=False, stats=None)
    scheduler.batcher.add(Accepted(make_record("a", 0, instances=0), ready_at=1e12))  # just taken, not due
    scheduler._request_frames()
    assert (len(ingest["a"].calls), len(ingest["b"].calls)) == (0, 1)  # only b, which has none waiting
    scheduler._pending.clear()                                         # b's take answered nothing
    dispatched = []
    scheduler.workers[0].handle = type("Worker", (), {"infer": TakeRecorder()})()
    scheduler.workers[0].handle.infer.calls = dispatched
    scheduler._dispatch()
    assert len(dispatched) == 1 and len(scheduler.batcher) == 0        # no take in flight: sent now


def test_the_streams_are_counted_waiting_reading_and_finished_for_the_metrics():
    """Offline with sources.max_open: the streams still to open (and those opening) are waiting."""
    from pipeline.scheduler import _Pending
    from pipeline.sources import parse_source

    class StatesRecorder:
        def stream_states(self, *counts):
            self.counts = counts

    stats = StatesRecorder()
    scheduler = Scheduler({"a": object(), "b": object()}, {"w0": object()}, [{"name": "w0", "pid": 1}],
                          publisher=None, batching=BatchingSection(), live=False, live_queue=1, keep_pixels=False,
                          stats=stats, waiting=[parse_source(f"{sid}=synthetic:") for sid in "cde"], max_open=3)
    scheduler.streams["b"].reading = False                          # b read to its end
    scheduler.waiting.popleft()                                     # c is being opened
    scheduler._pending["ref"] = _Pending("open", spec=parse_source("c=synthetic:"))
    scheduler._count_streams()
    assert stats.counts == (3, 1, 1)                                # c, d, e waiting; a reading; b finished


def test_an_eos_waits_offline_for_a_stream_with_no_frame_out_yet_but_never_live():
    """Offline, a's end waits until b has a frame out (a consumer that has seen only a would stop
    at a's end); live, b may be a camera that never answers: a's end goes at once."""
    for live, held in ((False, True), (True, False)):
        scheduler = Scheduler({"a": object(), "b": object()}, {"w0": object()}, [{"name": "w0", "pid": 1}],
                              publisher=None, batching=BatchingSection(), live=live, live_queue=1,
                              keep_pixels=False, stats=None)
        a, b = scheduler.streams["a"], scheduler.streams["b"]
        a.reading, a.confirmed = False, 5          # a read to its end, its 5 frames out
        assert scheduler._hold_eos(a) is held
        b.confirmed = 1                            # b's first frame is out: a's end may go
        assert scheduler._hold_eos(a) is False

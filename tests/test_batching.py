"""The dynamic batching rule: full batches leave at once, partial ones after max_wait, failed ones first."""
import pytest

from pipeline.batching import Accepted, DynamicBatcher, error_line


def frames(stream: str, seqs, ready_at: float) -> list[Accepted]:
    return [Accepted({"stream": stream, "seq": seq}, pixels=None, decode_ms=0.0, ready_at=ready_at)
            for seq in seqs]


def keys(batch):
    return [(item.record["stream"], item.record["seq"]) for item in batch]


def test_full_batch_leaves_at_once_across_streams():
    batcher = DynamicBatcher(max_batch=3, max_wait_s=0.010)
    for item in frames("a", [0, 1], 100.0) + frames("b", [0, 1], 100.0):
        batcher.add(item)
    assert keys(batcher.next_batch(now=100.0)) == [("a", 0), ("a", 1), ("b", 0)]
    assert len(batcher) == 1


def test_partial_batch_waits_for_max_wait_then_leaves():
    batcher = DynamicBatcher(max_batch=4, max_wait_s=0.010)
    for item in frames("a", [0], 100.0) + frames("b", [0], 100.004):
        batcher.add(item)
    assert batcher.next_batch(now=100.005) is None
    assert batcher.seconds_until_due(now=100.005) == pytest.approx(0.005)
    assert keys(batcher.next_batch(now=100.010)) == [("a", 0), ("b", 0)]
    assert batcher.next_batch(now=200.0) is None and batcher.seconds_until_due(200.0) is None


def test_flush_sends_a_partial_batch_when_no_more_frames_come():
    batcher = DynamicBatcher(max_batch=4, max_wait_s=10.0)
    batcher.add(frames("a", [5], 100.0)[0])
    assert keys(batcher.next_batch(now=100.0, flush=True)) == [("a", 5)]


def test_failed_batch_goes_back_first_in_its_order_and_is_due_at_once():
    batcher = DynamicBatcher(max_batch=2, max_wait_s=10.0)
    batcher.add(frames("a", [4], 100.0)[0])
    batcher.put_back(frames("a", [2, 3], 99.0))
    assert keys(batcher.next_batch(now=100.0)) == [("a", 2), ("a", 3)]
    assert batcher.next_batch(now=100.0) is None  # the newer frame still waits its turn


def test_error_line_strips_ray_traceback():
    text = ("ray::InferenceWorker.infer() (pid=1, ip=1.2.3.4)\n  File \"x.py\", line 3, in infer\n"
            "    raise ValueError('bad')\nValueError: frame 3 has 2 channels\n")
    assert error_line(RuntimeError(text)) == "frame 3 has 2 channels"
    assert error_line(RuntimeError("plain message")) == "plain message"


def test_the_scheduler_sleeps_past_an_overdue_batch_while_every_worker_is_busy():
    """An overdue partial batch wakes the loop only when a worker could take it; with every
    worker busy the loop waits for a result (a timeout of 0 here would spin at 100% CPU)."""
    from pipeline.batching import Scheduler
    scheduler = Scheduler({}, {"w0": object()}, publisher=None, live=False, max_batch=4, max_wait_ms=10.0,
                          max_in_flight=12, batches_per_worker=2, live_queue=1, overlay=False, stats=None)
    for item in frames("a", [0, 1], ready_at=0.0):  # long overdue
        scheduler.batcher.add(item)
    assert scheduler._wait_timeout() == 0.0          # a worker slot is free: dispatch now
    scheduler.workers[0].batches = 2                  # both slots of the only worker taken
    assert scheduler._wait_timeout() == 0.1

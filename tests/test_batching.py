"""The dynamic batching rule: full batches leave at once, partial ones after max_wait, failed ones first."""
import pytest

from pipeline.batching import Accepted, DynamicBatcher
from tests.wire_helpers import make_record


def frames(stream: str, seqs, ready_at: float) -> list[Accepted]:
    return [Accepted(make_record(stream, seq, instances=0), ready_at=ready_at) for seq in seqs]


def keys(batch):
    return [(item.record.stream, item.record.seq) for item in batch]


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

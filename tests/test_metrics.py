"""Run statistics: counts, per-stage percentiles, the summary table, and Prometheus over HTTP."""
import time
import urllib.request

import pytest

from pipeline.metrics import RunStats
from tests.pipeline_helpers import free_port
from tests.wire_helpers import make_record


def record(stream: str, inference_ms: float):
    return make_record(stream, 0, instances=0, captured_at=time.time(),
                       timing_ms={"decode": 1.0, "queue": 2.0, "fetch": 0.5, "inference": inference_ms})


def test_counts_percentiles_and_prometheus_scrape():
    port = free_port()
    stats = RunStats({"cam1": None, "cam2": 10}, progress=False, metrics_port=port)
    try:
        assert stats._server.server_address[0] == "127.0.0.1"  # this machine only, unless asked
        stats.restart("ingest")
        stats.restart("publisher")
        delivery = {"subscriptions": 2, "undelivered": 3, "stalls": 1, "blocked_s": 1.5}
        stats.delivery(delivery)
        stats.delivery({**delivery, "undelivered": 5})
        stats.delivery({**delivery, "undelivered": 1, "stalls": 0, "blocked_s": 0.0})  # a restarted publisher
        assert stats.delivered == {"undelivered": 6, "stalls": 1, "blocked_s": 1.5}
        for i in range(100):
            stats.accepted("cam1", dropped_before=2 if i == 50 else 0)
            stats.published(record("cam1", inference_ms=float(i + 1)))
        stats.rerun()
        stats.accepted("cam2", 0)
        stats.published(record("cam2", inference_ms=1.0))
        stats.refresh_quantiles()
        gate = {"in": {"car": 2}, "out": {}}
        stats.zones({"cam1": {"zone_counts": {"door": {"person": 2, "car": 1}}, "line_counts": {"gate": gate}}})
        stats.zones({"cam1": {"zone_counts": {"door": {"person": 1}},                 # the car left the door
                              "line_counts": {"gate": {"in": {"car": 3}, "out": {"person": 1}}}}})
        stats.zones({"cam1": {"zone_counts": {"door": {"person": 1}}, "line_counts": {"gate": gate}}})  # restarted
        stats.stream_states(waiting=5, reading=2, finished=0)
        stats.stream_states(waiting=3, reading=2, finished=2)
        latency = stats.latency_ms()
        assert latency["inference"]["count"] == 101
        assert latency["inference"]["p50"] == pytest.approx(50.0)
        assert latency["decode"]["p99"] == 1.0
        assert latency["result"]["count"] == 101
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        stats.close()
    assert 'maskstream_frames_published_total{stream="cam1"} 100.0' in text
    assert 'maskstream_frames_accepted_total{stream="cam2"} 1.0' in text
    assert 'maskstream_frames_dropped_total{stream="cam1"} 2.0' in text
    assert 'maskstream_stage_latency_seconds_count{stage="inference"} 101.0' in text
    assert 'maskstream_stage_latency_ms{quantile="0.5",stage="inference"} 50.0' in text
    assert "maskstream_batches_rerun_total 1.0" in text
    assert 'maskstream_actor_restarts_total{actor="ingest"} 1.0' in text
    assert 'maskstream_actor_restarts_total{actor="publisher"} 1.0' in text
    assert "maskstream_publish_undelivered_total 6.0" in text and "maskstream_publish_subscriptions 2.0" in text
    assert 'maskstream_zone_instances{label="person",stream="cam1",zone="door"} 1.0' in text
    assert all(f'maskstream_streams{{state="{state}"}} {n}.0' in text for state, n in
               (("waiting", 3), ("reading", 2), ("finished", 2)))
    assert 'maskstream_zone_instances{label="car",stream="cam1",zone="door"} 0.0' in text
    assert 'maskstream_line_crossings_total{direction="in",label="car",line="gate",stream="cam1"} 3.0' in text
    assert 'maskstream_line_crossings_total{direction="out",label="person",line="gate",stream="cam1"} 1.0' in text


def test_summary_joins_ingest_publisher_and_errors():
    stats = RunStats({"cam1": 3}, progress=False, metrics_port=None)
    for _ in range(3):
        stats.accepted("cam1", 0)
        stats.published(record("cam1", 5.0))
    stats.ended("cam1", 3)
    stats.rerun()
    publisher = {"streams": {"cam1": {"published": 3, "latency_ms": {"end_to_end": {"p50": 9.0, "p95": 9.5, "p99": 9.9}},
                                      "line_counts": {"gate": {"in": {"car": 3, "person": 1}, "out": {}}}}}}
    worker = {"name": "w0", "device": "cpu", "gpu_ids": [], "node_id": "n", "threads": 2, "precision": "bfloat16"}
    summary = stats.summary({"cam1": {"read": 4, "dropped": 1}}, publisher, workers=[worker],
                            errors={"bad": "bad.avi: no such file"})
    stats.close()
    row = summary.streams["cam1"]
    assert (row.frames_in, row.published, row.dropped) == (4, 3, 1)
    assert summary.published == 3 and summary.errors == ["bad.avi: no such file"]
    table = summary.table()
    assert "cam1" in table and "9/10/10" in table and "error: bad.avi: no such file" in table
    assert summary.reruns == 1 and "re-run after a worker died: 1 batch(es)" in table
    assert "worker w0: cpu, threads 2, bfloat16" in table.splitlines()  # what each worker got
    assert "line gate of cam1: crossed in car 3, person 1, out none" in table.splitlines()
    stats.restart("publisher")
    stats.delivery({"subscriptions": 1, "undelivered": 0, "stalls": 2, "blocked_s": 4.0})
    lines = stats.summary({"cam1": {"read": 4, "dropped": 1, "skipped": 2}}, publisher, workers=[], errors={}
                          ).delivery_lines()
    assert lines == ["restarted after a crash: publisher 1", "cam1: 2 frame(s) could not be decoded, passed over",
                     "publisher waited 4.0 s in all for slow subscribers",
                     "publisher stopped waiting for a stalled subscriber 2 time(s) (cut off): it missed frames"]
    assert [line.split()[0] for line in table.splitlines()[4:9]] == ["decode", "queue", "fetch", "inference", "result"]

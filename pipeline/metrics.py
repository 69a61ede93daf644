"""What a run did: progress bars, counts and latency percentiles, and the same as Prometheus metrics.

`RunStats` is fed by the scheduler (a frame accepted, a frame published, a stream ended) and
gives the end-of-run `RunSummary`. With a metrics port it serves, from its own registry:

- `maskstream_frames_accepted_total{stream}`, `maskstream_frames_published_total{stream}`,
  `maskstream_frames_dropped_total{stream}` (live frames dropped before inference);
- `maskstream_batches_rerun_total`: batches re-run because their worker died;
- `maskstream_actor_restarts_total{actor}`: ingest, publisher and worker actors restarted after a crash;
- `maskstream_publish_subscriptions`: subscriptions the publisher sees now;
  `maskstream_publish_undelivered_total` (live: frames not queued for every subscriber),
  `maskstream_publish_stalls_total` (offline: stalled subscribers cut off or given up on),
  `maskstream_publish_blocked_seconds_total` (offline: time spent waiting for slow subscribers);
- `maskstream_streams{state}`: the run's streams `waiting` their turn (offline,
  `sources.max_open`) or opening, `reading`, and `finished` (read to their end or failed);
- `maskstream_stage_latency_seconds{stage}`: a histogram per stage;
- `maskstream_stage_latency_ms{stage, quantile}`: p50, p95 and p99 over recent frames, as in
  the summary (refreshed at most once a second);
- with zones (pipeline/zones.py), from the publisher's answers: `maskstream_zone_instances{stream,
  zone, label}`, the instances standing in each region in the last frame sent, and
  `maskstream_line_crossings_total{stream, line, direction, label}`, the tracked objects that
  crossed each counting line.

Stages: `decode` (reading the frame from its source), `queue` (capture to dispatch: buffers
and batching), `fetch` (the worker reading the pixels from the object store), `inference` (the
model on the frame's batch) and `result` (capture to the result being back for publishing).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from tqdm import tqdm

from .zones import line_figure

if TYPE_CHECKING:
    from .protocol import FrameRecord

STAGES = ("decode", "queue", "fetch", "inference", "result")
QUANTILES = (50, 95, 99)
LATENCY_SAMPLES = 10_000      # per stage: recent enough, bounded memory
QUANTILE_REFRESH_S = 1.0
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


ACTORS = ("ingest", "publisher", "worker")
DELIVERY_COUNTERS = ("undelivered", "stalls", "blocked_s")


@dataclass
class StreamSummary:
    stream: str
    frames_in: int                 # read from the source (published, dropped, or stopped before inference)
    published: int
    dropped: int                   # live: dropped before inference
    fps: float                     # published frames per second of the run
    error: str | None = None
    end_to_end_ms: dict = field(default_factory=dict)  # {p50, p95, p99}, capture to publish
    skipped: int = 0               # could not be decoded (damaged input), passed over
    line_counts: dict = field(default_factory=dict)  # with counting lines: {line: {in, out: {label: n}}}


@dataclass
class RunSummary:
    seconds: float
    streams: dict[str, StreamSummary]
    latency_ms: dict[str, dict]    # stage -> {count, p50, p95, p99}
    workers: list[dict]            # each worker's ready() answer: name, device, gpu_ids, node_id, threads, precision
    errors: list[str]              # one line per input that failed
    reruns: int = 0                # batches re-run because their worker died
    restarts: dict = field(default_factory=dict)   # actor kind -> restarts after a crash
    delivery: dict = field(default_factory=dict)   # the publisher's undelivered, stalls, blocked_s
    peak_unsent: int = 0           # most frames accepted and not yet sent by the publisher at once
    not_started: list[str] = field(default_factory=list)  # streams still waiting their turn when the run stopped
    skipped: list[str] = field(default_factory=list)      # streams passed over: done by an earlier run (skip_done)

    @property
    def published(self) -> int:
        return sum(s.published for s in self.streams.values())

    def table(self) -> str:
        """The summary as a plain-text table."""
        lines = [f"{'stream':<20} {'in':>7} {'published':>9} {'dropped':>7} {'fps':>7}  end-to-end ms p50/p95/p99"]
        for s in self.streams.values():
            e2e = "/".join(f"{s.end_to_end_ms[f'p{q}']:.0f}" for q in QUANTILES) if s.end_to_end_ms else "-"
            lines.append(f"{s.stream:<20} {s.frames_in:>7} {s.published:>9} {s.dropped:>7} {s.fps:>7.1f}  {e2e}")
        total_fps = self.published / self.seconds if self.seconds > 0 else 0.0
        lines.append(f"{'all':<20} {sum(s.frames_in for s in self.streams.values()):>7} {self.published:>9} "
                     f"{sum(s.dropped for s in self.streams.values()):>7} {total_fps:>7.1f}  in {self.seconds:.1f} s")
        lines.append(f"{'stage latency ms':<20} {'p50':>9} {'p95':>9} {'p99':>9} {'frames':>7}")
        for stage, p in self.latency_ms.items():
            lines.append(f"{stage:<20} {p['p50']:>9.1f} {p['p95']:>9.1f} {p['p99']:>9.1f} {p['count']:>7}")
        for w in self.workers:
            convolution = f", {w['convolution']}" if w.get("convolution") else ""
            lines.append(f"worker {w['name']}: {w['device']}, threads {w['threads']}, {w.get('precision') or '-'}"
                         + convolution)
        for s in self.streams.values():
            for name, totals in s.line_counts.items():
                lines.append(f"line {name} of {s.stream}: crossed {line_figure(totals)}")
        if self.skipped:
            lines.append(f"passed over, done in an earlier run: {len(self.skipped)} stream(s), {few(self.skipped)}")
        if self.not_started:
            lines.append(f"not started (the run was stopped first): {len(self.not_started)} stream(s), "
                         f"{few(self.not_started)}")
        if self.reruns:
            lines.append(f"re-run after a worker died: {self.reruns} batch(es)")
        lines += self.delivery_lines()
        return "\n".join(lines + [f"error: {e}" for e in self.errors])

    def delivery_lines(self) -> list[str]:
        """One line each for what did not go as a plain run goes: restarts, input passed over,
        subscribers waited for or given up on, frames not queued for every subscriber."""
        lines = []
        if any(self.restarts.values()):
            lines.append("restarted after a crash: " + ", ".join(f"{kind} {n}" for kind, n in self.restarts.items() if n))
        lines += [f"{s.stream}: {s.skipped} frame(s) could not be decoded, passed over"
                  for s in self.streams.values() if s.skipped]
        if self.delivery.get("blocked_s"):
            lines.append(f"publisher waited {self.delivery['blocked_s']:.1f} s in all for slow subscribers")
        if self.delivery.get("stalls"):
            lines.append(f"publisher stopped waiting for a stalled subscriber {self.delivery['stalls']} time(s) "
                         "(cut off): it missed frames")
        if self.delivery.get("undelivered"):
            lines.append(f"publisher could not queue {self.delivery['undelivered']} frame(s) for every subscriber "
                         "(a subscriber's queue was full)")
        return lines


def few(names: list[str], shown: int = 3) -> str:
    """`a, b, c, ...`: the first `shown` names, and an ellipsis for more."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def percentiles(samples) -> dict:
    """{count, p50, p95, p99} of a sequence of numbers (non-empty)."""
    values = np.percentile(np.fromiter(samples, float), QUANTILES)
    return {"count": len(samples), **{f"p{q}": float(v) for q, v in zip(QUANTILES, values)}}


class RunStats:
    """Counts and latencies of a run, shown as progress bars and served to Prometheus."""

    def __init__(self, totals: dict[str, int | None], progress: bool, metrics_port: int | None,
                 metrics_host: str = "127.0.0.1"):
        """`totals`: expected frames per stream (None when unknown); progress bars are shown for
        streams in `totals` when `progress` and stderr is a terminal; metrics are served on
        `metrics_host`:`metrics_port` when a port is given."""
        self.started = time.monotonic()
        self.reruns = 0
        self.restarts = dict.fromkeys(ACTORS, 0)
        self.delivered = dict.fromkeys(DELIVERY_COUNTERS, 0)  # summed over publisher incarnations
        self._delivery_seen = dict.fromkeys(DELIVERY_COUNTERS, 0)  # the current incarnation's last answer
        self.accepted_frames: dict[str, int] = {}
        self.published_frames: dict[str, int] = {}
        self._latency = {stage: deque(maxlen=LATENCY_SAMPLES) for stage in STAGES}
        self._progress = progress
        self._bars = {}
        for sid, total in totals.items():
            self.add_stream(sid, total)
        self._registry = CollectorRegistry()
        self._server = None
        labels = {"registry": self._registry}
        self._m_accepted = Counter("maskstream_frames_accepted", "Frames accepted for inference", ["stream"], **labels)
        self._m_published = Counter("maskstream_frames_published", "Frames published", ["stream"], **labels)
        self._m_dropped = Counter("maskstream_frames_dropped", "Live frames dropped before inference",
                                  ["stream"], **labels)
        self._m_reruns = Counter("maskstream_batches_rerun", "Batches re-run because their worker died",
                                 **labels)
        self._m_restarts = Counter("maskstream_actor_restarts", "Actors restarted after a crash", ["actor"], **labels)
        self._m_subscriptions = Gauge("maskstream_publish_subscriptions", "Subscriptions the publisher sees",
                                      **labels)
        self._m_delivery = {
            "undelivered": Counter("maskstream_publish_undelivered", "Live frames not queued for every subscriber",
                                   **labels),
            "stalls": Counter("maskstream_publish_stalls", "Stalled subscribers no longer waited for", **labels),
            "blocked_s": Counter("maskstream_publish_blocked_seconds", "Time spent waiting for slow subscribers",
                                 **labels)}
        self._m_streams = Gauge("maskstream_streams", "Streams waiting their turn or opening, reading, finished",
                                ["state"], **labels)
        self._stream_states: tuple[int, int, int] | None = None
        self._m_latency = Histogram("maskstream_stage_latency_seconds", "Latency per stage", ["stage"],
                                    buckets=LATENCY_BUCKETS_S, **labels)
        self._m_quantile = Gauge("maskstream_stage_latency_ms", "Latency percentiles per stage over recent frames",
                                 ["stage", "quantile"], **labels)
        self._m_zone = Gauge("maskstream_zone_instances", "Instances standing in each region in the last frame sent",
                             ["stream", "zone", "label"], **labels)
        self._m_crossings = Counter("maskstream_line_crossings", "Tracked objects that crossed each counting line",
                                    ["stream", "line", "direction", "label"], **labels)
        self._zone_labels: set[tuple[str, str, str]] = set()   # (stream, zone, label) gauges set so far
        self._crossings_seen: dict[tuple[str, str, str, str], int] = {}
        self._quantiles_at = 0.0
        if metrics_port is not None:
            self._server, _thread = start_http_server(metrics_port, addr=metrics_host, registry=self._registry)

    def add_stream(self, stream: str, total: int | None) -> None:
        """A stream that opened (`total`: its expected frames, None when unknown): counted, with a bar."""
        self.accepted_frames[stream] = self.published_frames[stream] = 0
        self._bars[stream] = tqdm(total=total, desc=stream, unit="frame", leave=True, dynamic_ncols=True,
                                  disable=None if self._progress else True)

    def accepted(self, stream: str, dropped_before: int) -> None:
        self.accepted_frames[stream] += 1
        self._m_accepted.labels(stream).inc()
        if dropped_before:
            self._m_dropped.labels(stream).inc(dropped_before)

    def published(self, record: FrameRecord) -> None:
        """A frame's result went to the publisher; `record.timing_ms` holds its stage times."""
        stream = record.stream
        self.published_frames[stream] += 1
        self._m_published.labels(stream).inc()
        stages = dict(record.timing_ms, result=(time.time() - record.captured_at) * 1e3)
        for stage, ms in stages.items():
            if stage in self._latency:
                self._latency[stage].append(ms)
                self._m_latency.labels(stage).observe(ms / 1e3)
        self._bars[stream].update(1)
        if time.monotonic() - self._quantiles_at >= QUANTILE_REFRESH_S:
            self.refresh_quantiles()

    def rerun(self) -> None:
        """A batch is run again because its worker died."""
        self.reruns += 1
        self._m_reruns.inc()

    def restart(self, actor: str) -> None:
        """An actor (one of ACTORS) was restarted after a crash."""
        self.restarts[actor] += 1
        self._m_restarts.labels(actor).inc()

    def zones(self, streams: dict) -> None:
        """The publisher's zone figures as it last answered, ``{stream: {"zone_counts",
        "line_counts"}}``: region gauges set (a label no longer there: 0); crossing counters moved
        up to the totals (a restarted publisher's totals start where its snapshot was: never down)."""
        for stream, figures in streams.items():
            now = {(stream, zone, label): n for zone, by_label in figures["zone_counts"].items()
                   for label, n in by_label.items()}
            for key in self._zone_labels - now.keys():
                if key[0] == stream:
                    self._m_zone.labels(*key).set(0)
            for key, n in now.items():
                self._m_zone.labels(*key).set(n)
            self._zone_labels |= now.keys()
            for line, totals in figures["line_counts"].items():
                for direction, by_label in totals.items():
                    for label, n in by_label.items():
                        key = (stream, line, direction, label)
                        if n > self._crossings_seen.get(key, 0):
                            self._m_crossings.labels(*key).inc(n - self._crossings_seen.get(key, 0))
                            self._crossings_seen[key] = n

    def stream_states(self, waiting: int, reading: int, finished: int) -> None:
        """How many streams wait their turn (or are opening), are read, have finished reading."""
        if (waiting, reading, finished) != self._stream_states:
            self._stream_states = (waiting, reading, finished)
            for state, count in zip(("waiting", "reading", "finished"), self._stream_states):
                self._m_streams.labels(state).set(count)

    def delivery(self, counters: dict) -> None:
        """The publisher's delivery counters as it last answered (they start again from 0 when
        it is restarted)."""
        self._m_subscriptions.set(counters["subscriptions"])
        for name in DELIVERY_COUNTERS:
            value, seen = counters[name], self._delivery_seen[name]
            grown = value - seen if value >= seen else value  # smaller: a restarted publisher
            self._delivery_seen[name] = value
            if grown > 0:
                self.delivered[name] += grown
                self._m_delivery[name].inc(grown)

    def refresh_quantiles(self) -> None:
        self._quantiles_at = time.monotonic()
        for stage, p in self.latency_ms().items():
            for q in QUANTILES:
                self._m_quantile.labels(stage, str(q / 100)).set(p[f"p{q}"])

    def ended(self, stream: str, frames: int) -> None:
        """The stream ended after `frames` frames: its bar shows the true total and is done (its
        line kept; a run of many streams has bars for those being read)."""
        bar = self._bars[stream]
        bar.total = frames
        bar.refresh()
        bar.close()

    def latency_ms(self) -> dict[str, dict]:
        return {stage: percentiles(samples) for stage, samples in self._latency.items() if samples}

    def summary(self, ingest_counts: dict[str, dict], publisher_stats: dict, workers: list[dict],
                errors: dict[str, str]) -> RunSummary:
        """The run's summary. `ingest_counts`: {stream: {"read", "dropped"}}; `publisher_stats`:
        the publisher's close() answer; `errors`: {stream: one-line problem}."""
        seconds = time.monotonic() - self.started
        published_by = publisher_stats.get("streams", {})
        streams = {}
        for sid in self.accepted_frames:
            counts = ingest_counts.get(sid, {"read": 0, "dropped": 0})
            sent = published_by.get(sid, {})
            streams[sid] = StreamSummary(
                stream=sid, frames_in=counts["read"], published=sent.get("published", 0),
                dropped=counts["dropped"], fps=sent.get("published", 0) / seconds if seconds > 0 else 0.0,
                error=errors.get(sid), end_to_end_ms=sent.get("latency_ms", {}).get("end_to_end", {}),
                skipped=counts.get("skipped", 0), line_counts=sent.get("line_counts", {}))
        if "delivery" in publisher_stats:
            self.delivery({**publisher_stats["delivery"]})
        self.refresh_quantiles()
        return RunSummary(seconds, streams, self.latency_ms(), workers, list(errors.values()), self.reruns,
                          dict(self.restarts), dict(self.delivered))

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

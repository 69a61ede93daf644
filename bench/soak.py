"""Soak: live mode for a long time, watching memory and latency for growth.

    python bench/soak.py [--minutes 20] [--sample-s 60] [--fps 25] [--width 640 --height 360]

The embedded default pipeline (the default model) in live mode on generated scenes paced at
`--fps` frames a second (`synthetic:`), with a real ZeroMQ subscriber in this process, for
`--minutes`. Every `--sample-s` seconds it samples the resident memory (RSS) of every process of
the run (this driver, each actor: ingest, publisher, inference workers; Ray's raylet and GCS),
the object store's use, and the end-to-end latency (capture to the subscriber) of the frames
received since the last sample. It prints each sample, then the first and the last five
minutes side by side (means of the samples in each, latency percentiles over their frames) with
the change in percent, and writes bench/results/soak.json. Target: no growth beyond noise
(under 5% in RSS and object store from the first five minutes to the last) and the same p99.

A benchmark, not a test: the machine is shared and its load shows in the latencies; the load
average is recorded with each sample.
"""
import argparse
import json
import os
import platform
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import ray  # noqa: E402
from ray._private import ray_constants  # noqa: E402
from ray._private.internal_api import memory_summary  # noqa: E402

from pipeline.config import load_pipeline_config  # noqa: E402
from pipeline.consumer import Consumer  # noqa: E402
from pipeline.protocol import FrameRecord  # noqa: E402
from pipeline.runner import run  # noqa: E402

RESULTS = REPO / "bench" / "results" / "soak.json"
PORT = 5582
WINDOW_MIN = 5  # the first and the last five minutes are compared


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB, or None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def title(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")


def run_processes() -> dict[str, int]:
    """{name: pid} of this run's processes: the driver, each actor (children of this node's raylet
    titled ray::<Class>), the raylet and the GCS server."""
    node = ray._private.worker._global_node
    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    processes = {"driver": os.getpid(), "raylet": raylet,
                 "gcs_server": node.all_processes[ray_constants.PROCESS_TYPE_GCS_SERVER][0].process.pid}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            name = title(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
        if parent == raylet and name.startswith("ray::") and not name.startswith("ray::IDLE"):
            actor = name[len("ray::"):].split(".")[0]
            processes[f"{actor}:{entry.name}"] = int(entry.name)
    return processes


def object_store_mb() -> float:
    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    match = re.search(r"Plasma memory usage (\d+) MiB", text)
    return float(match.group(1)) if match else 0.0


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"count": len(values), "p50": float(p50), "p95": float(p95), "p99": float(p99)}


def window(samples: list[dict], latencies: list[tuple[float, float]], start: float, end: float) -> dict:
    """Means of the samples taken in [start, end) minutes and latency percentiles of the frames."""
    chosen = [s for s in samples if start <= s["minute"] < end]
    processes = sorted({name for s in chosen for name in s["rss_mb"]})
    rss = {name: float(np.mean([s["rss_mb"][name] for s in chosen if name in s["rss_mb"]])) for name in processes}
    return {"minutes": [start, end], "samples": len(chosen), "rss_mb": rss,
            "rss_total_mb": float(np.mean([sum(s["rss_mb"].values()) for s in chosen])) if chosen else 0.0,
            "object_store_mb": float(np.mean([s["object_store_mb"] for s in chosen])) if chosen else 0.0,
            "latency_ms": percentiles([ms for minute, ms in latencies if start <= minute < end])}


def change(first: float, last: float) -> float | None:
    return None if not first else 100.0 * (last - first) / first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="how long (default 20)")
    parser.add_argument("--sample-s", type=float, default=60.0, help="seconds between samples (default 60)")
    parser.add_argument("--fps", type=float, default=25.0, help="the generated scenes' frame rate")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    args = parser.parse_args()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
    endpoint = f"tcp://127.0.0.1:{PORT}"
    config = load_pipeline_config(None, [
        f"sources.uris=['synthetic:width={args.width},height={args.height},fps={args.fps},frames=100000000']",
        "sources.mode=live", f"publish.endpoint={endpoint}", "progress=false"])
    stop = threading.Event()
    outcome = {}
    pipeline = threading.Thread(target=lambda: outcome.update(summary=run(config, stop=stop)), daemon=True)
    latencies: list[tuple[float, float]] = []  # (minute, end-to-end ms)
    samples = []
    with Consumer(endpoint, timeout=120) as consumer:
        pipeline.start()
        started = None
        next_sample = None
        while True:
            message = consumer.receive(timeout=120)
            if message is None or not isinstance(message, FrameRecord):
                if message is None:
                    raise SystemExit("no frame for 120 s: the pipeline stalled")
                continue
            now = time.time()
            if started is None:  # the clock starts at the first frame (after the model's warm-up)
                started, next_sample = now, now + args.sample_s
            minute = (now - started) / 60
            latencies.append((minute, (now - message.captured_at) * 1e3))
            if now >= next_sample:
                next_sample += args.sample_s
                since = [ms for m, ms in latencies if m >= minute - args.sample_s / 60]
                sample = {"minute": round(minute, 2), "load_average": os.getloadavg()[0],
                          "rss_mb": {name: mb for name, pid in run_processes().items()
                                     if (mb := rss_mb(pid)) is not None},
                          "object_store_mb": object_store_mb(), "frames": len(since),
                          "latency_ms": percentiles(since), "gaps": len(consumer.gaps)}
                samples.append(sample)
                print(f"minute {sample['minute']:5.1f}  rss {sum(sample['rss_mb'].values()):7.0f} MB  "
                      f"object store {sample['object_store_mb']:5.0f} MB  frames {sample['frames']:5d}  "
                      f"latency p50/p99 {sample['latency_ms'].get('p50', 0):6.0f}/"
                      f"{sample['latency_ms'].get('p99', 0):6.0f} ms  load {sample['load_average']:.1f}", flush=True)
            if minute >= args.minutes:
                break
        stop.set()
        for _ in consumer.messages():  # to the EOS
            pass
    pipeline.join()
    summary = outcome["summary"]
    span = min(WINDOW_MIN, args.minutes / 2)
    first, last = window(samples, latencies, 0, span), window(samples, latencies, args.minutes - span, args.minutes + 1)
    report = {"machine": {"cores": os.cpu_count(), "platform": platform.platform()},
              "minutes": args.minutes, "fps": args.fps, "size": [args.width, args.height],
              "model": os.path.relpath(config.model.config, REPO),
              "frames_in": sum(s.frames_in for s in summary.streams.values()), "published": summary.published,
              "dropped": sum(s.dropped for s in summary.streams.values()), "gaps_at_subscriber": len(consumer.gaps),
              "restarts": summary.restarts, "samples": samples, "first": first, "last": last,
              "change_percent": {"rss_total": change(first["rss_total_mb"], last["rss_total_mb"]),
                                 "object_store": change(first["object_store_mb"], last["object_store_mb"]),
                                 "latency_p99": change(first["latency_ms"].get("p99", 0),
                                                       last["latency_ms"].get("p99", 0))}}
    print(f"\n{'':<26} {'first ' + str(span) + ' min':>14} {'last ' + str(span) + ' min':>14} {'change':>8}")
    rows = [("RSS, all processes (MB)", first["rss_total_mb"], last["rss_total_mb"]),
            ("object store (MB)", first["object_store_mb"], last["object_store_mb"]),
            ("latency p50 (ms)", first["latency_ms"].get("p50", 0), last["latency_ms"].get("p50", 0)),
            ("latency p99 (ms)", first["latency_ms"].get("p99", 0), last["latency_ms"].get("p99", 0))]
    rows += [(f"RSS {name} (MB)", mb, last["rss_mb"].get(name, 0.0)) for name, mb in first["rss_mb"].items()]
    for name, a, b in rows:
        delta = change(a, b)
        print(f"{name:<26} {a:>14.1f} {b:>14.1f} {'' if delta is None else f'{delta:+.1f}%':>8}")
    print(f"{report['published']} frames published of {report['frames_in']} read ({report['dropped']} dropped "
          f"as stale, live); {report['gaps_at_subscriber']} gaps at the subscriber")
    ray.shutdown()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()

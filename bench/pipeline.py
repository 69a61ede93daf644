"""Pipeline speed: the pipeline as `maskstream run` runs it against the model alone, the
orchestration ceiling, live latency.

    python bench/pipeline.py [--frames N] [--live-frames N] [--set section.key=value ...]
                             [--only model|ceiling|live ...]

All on ../shared/data/pedestrians_720p.avi (1280x720), in one run, so the rows compare. The
pipeline runs the embedded default configuration exactly as `maskstream run --source CLIP` builds
it (Ray started as `maskstream run` starts it; the default model, `workers.cpus: auto`,
`workers.precision: auto`, the default batching): only the source, the frame count, the mode of
the live part and the publish endpoint (a free port of this benchmark) are overridden, plus
whatever `--set` adds (printed with the results).

1. `model`: the model alone in this process on N decoded frames, in batches of max_batch, with
   the thread count and precision the pipeline's worker gets (planned by the runner's own
   functions and checked against the worker's ready() answer) and the workers' score threshold
   (with tracking on, `tracking.low_score`: the weak detections that may continue a track have
   their masks computed too), before and after the pipeline run; `pipeline`: the same frames through the whole
   pipeline (ingest actor, object store, scheduler, worker, publisher, a real ZeroMQ
   subscriber). Throughput over the second half of the frames on both sides, so that graph
   compilation is left out of both; `ratio` = pipeline / model (target >= 0.9).
2. `ceiling`: every frame of the clip through the pipeline with a null model that finds nothing
   (it lives here only): frames/s from decode to the subscriber (target >= 200). Decoding alone
   is measured beside it.
3. `live`: the clip at its own 25 frames/s in live mode: latency per stage p50/p99 (see
   pipeline/metrics.py for the stages; end_to_end is capture to publish), beside the model's
   own time per frame at batch 1 on the same frames and threads (target: end-to-end p50 at most
   1.5 times that) and beside the worker's own inference p50 in the run (the ratio a loaded
   machine distorts least: both measured in the same seconds).

The publisher's encode+send time per frame for 20 and 100 instances is bench/publisher.py's.
Prints a table and writes bench/results/pipeline.json (`--only` runs some parts and updates
theirs in the file). Times vary with the machine's load.
"""
import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import clips  # noqa: E402
import ray  # noqa: E402

import models  # noqa: E402
from pipeline.config import load_pipeline_config  # noqa: E402
from pipeline.consumer import Consumer  # noqa: E402
from pipeline.runner import check_model_inputs, connect_ray, plan_workers, run, score_thresholds  # noqa: E402
from pipeline.sources import open_source, parse_source  # noqa: E402
from workers.device import model_precision, usable_cores  # noqa: E402

CLIP = clips.PEDESTRIANS
CLIP_FRAMES = 341
RESULTS = REPO / "bench" / "results" / "pipeline.json"
PORT = 5581


class NullModel:
    """Finds nothing, instantly: what is left is the pipeline's own cost."""

    def predict(self, frames, masks="rle"):
        return [models.Detections(boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
                                  class_ids=np.zeros(0, np.int32), labels=[], rles=[]) for _ in frames]


def null_model(config, weights):
    return NullModel()


def decode(frames: int) -> list[np.ndarray]:
    """The clip's first `frames` frames as RGB arrays."""
    return clips.decode(CLIP, frames)


def decode_rate() -> float:
    """Frames/s decoding the whole clip to RGB into one reused array, as the ingest decodes."""
    source = open_source(parse_source(str(CLIP)))
    began = time.perf_counter()
    count = 0
    while (frame := source.read()) is not None:
        count += 1
        source.decode_into(frame.rgb)
    rate = count / (time.perf_counter() - began)
    source.close()
    return rate


def second_half_rate(times: list[float]) -> float:
    """Frames/s over the second half of a list of completion times (one per frame)."""
    half = len(times) // 2
    return (len(times) - 1 - half) / (times[-1] - times[half])


def worker_setup(overrides: list[str]) -> tuple[int, str]:
    """The threads and precision the pipeline's (first) worker gets with these overrides, by the
    runner's and the worker's own rules (workers.cpus, workers.precision)."""
    config = load_pipeline_config(None, overrides)
    slots, use_gpus = plan_workers(config, len(config.sources.uris))
    precision = model_precision(config.workers.precision, check_model_inputs(config).precision,
                                "gpu" if use_gpus else "cpu")
    return min(slots[0].threads, usable_cores()), precision


def alone_model(overrides: list[str], precision: str):
    """The model exactly as the pipeline's workers get it (its precision, and the workers' score
    threshold: with tracking on, tracking.low_score, so that weak detections can continue tracks)."""
    config = load_pipeline_config(None, overrides)
    model_config = check_model_inputs(config)
    model_config.precision = precision
    _, model_config.box_head.score_threshold = score_thresholds(config, model_config)
    return models.load_model(model_config, config.model.weights)


def model_alone(model, frames: list[np.ndarray], max_batch: int) -> float:
    """Frames/s of predict over the second half of `frames`, in batches of max_batch."""
    done = []
    for start in range(0, len(frames), max_batch):
        batch = frames[start:start + max_batch]
        model.predict(batch, masks="rle")
        done += [time.perf_counter()] * len(batch)
    return second_half_rate(done)


def model_seconds_per_frame(model, frames: list[np.ndarray]) -> float:
    """Median seconds of predict on one frame at a time (batch 1), the first call left out."""
    times = []
    for frame in frames:
        began = time.perf_counter()
        model.predict([frame], masks="rle")
        times.append(time.perf_counter() - began)
    return float(np.median(times[1:]))


def through_pipeline(overrides: list[str], frames: int, model_factory=None) -> tuple[float, object]:
    """Runs the pipeline; returns (second-half frames/s at a real subscriber, the run summary)."""
    endpoint = f"tcp://127.0.0.1:{PORT}"
    config = load_pipeline_config(None, [f"publish.endpoint={endpoint}", "progress=false", *overrides])
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(summary=run(config, model_factory)))
    arrivals = []
    with Consumer(endpoint, timeout=600) as consumer:
        thread.start()
        for _ in consumer:  # frames only (no EOS, no Gap)
            arrivals.append(time.perf_counter())
    thread.join()
    assert len(arrivals) == frames, f"received {len(arrivals)} of {frames} frames"
    return second_half_rate(arrivals), outcome["summary"]


PARTS = ("model", "ceiling", "live")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64, help="frames for the model comparison")
    parser.add_argument("--live-frames", type=int, default=100, help="frames for the live latency run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a deviation from the default configuration (reported with the results)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="run only these parts")
    args = parser.parse_args()
    connect_ray(load_pipeline_config())          # as `maskstream run` starts Ray
    pipeline_overrides = [f"publish.endpoint=tcp://127.0.0.1:{PORT}", "progress=false", f"sources.uris=[{CLIP}]",
                          *args.set]
    config = load_pipeline_config(None, pipeline_overrides)
    threads, precision = worker_setup(pipeline_overrides)
    tf_threads(threads)
    max_batch = config.batching.max_batch
    report = json.loads(RESULTS.read_text()) if RESULTS.is_file() and set(args.only) != set(PARTS) else {}
    report["machine"] = {"cores": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()}
    report.update({"model": os.path.relpath(config.model.config, REPO), "weights": config.model.weights,
                   "max_batch": max_batch, "threads": threads, "precision": precision, "deviations": args.set})
    print(f"default configuration{' with ' + ' '.join(args.set) if args.set else ''}: "
          f"{report['model']}, one worker of {threads} threads, {precision}, batches of {max_batch}")
    model = alone_model(pipeline_overrides, precision)
    if "model" in args.only:
        report.update(compare_with_model(model, pipeline_overrides, args.frames, max_batch, threads, precision))
        print(f"{'model alone':<34} {report['model_fps']['mean']:8.1f} frames/s   ({report['frames']} frames, "
              f"batches of {max_batch}; {report['model_fps']['before']:.1f} before, "
              f"{report['model_fps']['after']:.1f} after the pipeline)")
        print(f"{'pipeline, same model':<34} {report['pipeline_fps']:8.1f} frames/s   ratio {report['ratio']:.2f} "
              f"(target >= 0.9)")
    if "ceiling" in args.only:
        decode_fps = decode_rate()
        ceiling_fps, _ = through_pipeline([f"sources.uris=[{CLIP}]", "workers.count=1", "workers.cpus=1",
                                           "batching.max_batch=8"], CLIP_FRAMES, model_factory=null_model)
        report.update({"decode_fps": decode_fps, "ceiling_fps": ceiling_fps, "ceiling_frames": CLIP_FRAMES})
        print(f"{'decode alone':<34} {decode_fps:8.1f} frames/s")
        print(f"{'pipeline, null model (ceiling)':<34} {ceiling_fps:8.1f} frames/s   ratio to decode "
              f"{ceiling_fps / decode_fps:.2f} (target >= 200 frames/s)")
    if "live" in args.only:
        frames = min(args.live_frames, CLIP_FRAMES)
        model_ms = model_seconds_per_frame(model, decode(12)) * 1e3
        live = live_run(pipeline_overrides, frames)
        check_worker(live, threads, precision)
        stream = next(iter(live.streams.values()))
        latency = dict(live.latency_ms, end_to_end={"count": stream.published, **stream.end_to_end_ms})
        report["live"] = {"frames_in": stream.frames_in, "published": stream.published, "dropped": stream.dropped,
                          "model_ms_batch_1": model_ms, "latency_ms": latency,
                          "end_to_end_p50_over_model": latency["end_to_end"]["p50"] / model_ms,
                          # the same against the worker's own inference in this run: what load distorts least
                          "end_to_end_p50_over_worker_inference": latency["end_to_end"]["p50"] /
                          latency["inference"]["p50"]}
        print(f"live at 25 frames/s: {stream.published} published, {stream.dropped} dropped of {stream.frames_in}")
        print(f"{'stage':<14} {'p50 ms':>9} {'p99 ms':>9}")
        for stage, p in latency.items():
            print(f"{stage:<14} {p['p50']:>9.1f} {p['p99']:>9.1f}")
        print(f"{'model alone, batch 1':<14} {model_ms:>9.1f}            end-to-end p50 / model "
              f"{report['live']['end_to_end_p50_over_model']:.2f} (target <= 1.5); over the worker's own "
              f"inference p50 {report['live']['end_to_end_p50_over_worker_inference']:.2f}")
    ray.shutdown()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; wrote {RESULTS.relative_to(REPO)}")


def tf_threads(threads: int) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def check_worker(summary, threads: int, precision: str) -> None:
    """The pipeline's worker ran with the threads and precision the model alone runs with."""
    worker = summary.workers[0]
    assert (worker["threads"], worker["precision"]) == (threads, precision), \
        f"the worker ran {worker['threads']} threads, {worker['precision']}; the model alone {threads}, {precision}"


def compare_with_model(model, overrides: list[str], frames: int, max_batch: int, threads: int,
                       precision: str) -> dict:
    """The model alone (before and after) against the whole pipeline on the same frames."""
    decoded = decode(frames)
    # The model alone before and after the pipeline: the machine's load drifts (it is shared).
    model_before = model_alone(model, decoded, max_batch)
    pipeline_fps, summary = through_pipeline([*overrides, f"sources.max_frames={len(decoded)}"], len(decoded))
    check_worker(summary, threads, precision)
    model_after = model_alone(model, decoded, max_batch)
    model_fps = (model_before + model_after) / 2
    return {"frames": len(decoded), "model_fps": {"before": model_before, "after": model_after, "mean": model_fps},
            "pipeline_fps": pipeline_fps, "ratio": pipeline_fps / model_fps}


def live_run(overrides: list[str], frames: int):
    """The clip at its own frame rate in live mode; returns the run summary."""
    return run(load_pipeline_config(None, [*overrides, f"sources.max_frames={frames}", "sources.mode=live"]))


if __name__ == "__main__":
    main()

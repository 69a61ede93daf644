"""Pipeline speed: the model alone against the whole pipeline, the orchestration ceiling, live latency.

    python bench/pipeline.py [--frames N] [--model configs/test_tiny.yaml] [--weights W] [--max-batch B]
                             [--only model|ceiling|live ...]

All on ../shared/data/pedestrians_720p.avi (1280x720), in one run, so the rows compare:

1. `model`: the model alone in this process on N decoded frames, in batches of max_batch, with as
   many TensorFlow threads as the worker gets and the pipeline's score threshold, before and after the pipeline run; `pipeline`: the same frames through the whole
   pipeline (ingest actor, object store, scheduler, one worker with the same model and threads,
   publisher, a real ZeroMQ subscriber). Throughput over the second half of the frames on both
   sides, so that graph compilation is left out of both; `ratio` = pipeline / model (target >= 0.9).
2. `ceiling`: every frame of the clip through the pipeline with a null model that finds nothing
   (it lives here only): frames/s from decode to the subscriber (target >= 200). Decoding alone
   is measured beside it.
3. `live`: the clip at its own 25 frames/s in live mode with the model: latency per stage
   p50/p99 (see pipeline/metrics.py for the stages; end_to_end is capture to publish).

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
import ray  # noqa: E402

import models  # noqa: E402
from pipeline.config import load_pipeline_config  # noqa: E402
from pipeline.consumer import Consumer  # noqa: E402
from pipeline.runner import check_model_inputs, run  # noqa: E402
from pipeline.sources import open_source, parse_source  # noqa: E402

CLIP = REPO.parent / "shared" / "data" / "pedestrians_720p.avi"
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
    source = open_source(parse_source(str(CLIP)))
    decoded = []
    while len(decoded) < frames and (frame := source.read()) is not None:
        decoded.append(frame.rgb)
    source.close()
    return decoded


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


def model_alone(frames: list[np.ndarray], model_overrides: list[str], weights: str | None, max_batch: int,
                threads: int) -> float:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    # The model config exactly as the pipeline's workers get it (its score threshold applied):
    # the same work on both sides.
    model = models.load_model(check_model_inputs(load_pipeline_config(None, model_overrides)), weights)
    done = []
    for start in range(0, len(frames), max_batch):
        batch = frames[start:start + max_batch]
        model.predict(batch, masks="rle")
        done += [time.perf_counter()] * len(batch)
    return second_half_rate(done)


def through_pipeline(overrides: list[str], frames: int, model_factory=None) -> tuple[float, object]:
    """Runs the pipeline; returns (second-half frames/s at a real subscriber, the run summary)."""
    endpoint = f"tcp://127.0.0.1:{PORT}"
    config = load_pipeline_config(None, [f"publish.endpoint={endpoint}", "progress=false", *overrides])
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(summary=run(config, model_factory)))
    arrivals = []
    with Consumer(endpoint, timeout=600) as consumer:
        thread.start()
        for message in consumer.messages():
            if hasattr(message, "seq"):
                arrivals.append(time.perf_counter())
    thread.join()
    assert len(arrivals) == frames, f"received {len(arrivals)} of {frames} frames"
    return second_half_rate(arrivals), outcome["summary"]


PARTS = ("model", "ceiling", "live")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64, help="frames for the model comparison")
    parser.add_argument("--live-frames", type=int, default=100, help="frames for the live latency run")
    parser.add_argument("--model", default=load_pipeline_config().model.config, help="model YAML")
    parser.add_argument("--weights", default=load_pipeline_config().model.weights)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="run only these parts")
    args = parser.parse_args()
    cores = os.cpu_count()
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
    model_overrides = [f"model.config={args.model}", f"model.weights={json.dumps(args.weights)}",
                       "workers.count=1", f"workers.cpus={cores}", f"batching.max_batch={args.max_batch}"]
    report = json.loads(RESULTS.read_text()) if RESULTS.is_file() and set(args.only) != set(PARTS) else {}
    report["machine"] = {"cores": cores, "platform": platform.platform(), "load_average": os.getloadavg()}
    report.update({"model": os.path.relpath(args.model, REPO), "weights": args.weights, "max_batch": args.max_batch})
    if "model" in args.only:
        report.update(compare_with_model(args, model_overrides))
        print(f"{'model alone':<34} {report['model_fps']['mean']:8.1f} frames/s   ({report['frames']} frames, "
              f"batches of {args.max_batch}; {report['model_fps']['before']:.1f} before, "
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
        live = live_run(model_overrides, min(args.live_frames, CLIP_FRAMES))
        stream = next(iter(live.streams.values()))
        latency = dict(live.latency_ms, end_to_end={"count": stream.published, **stream.end_to_end_ms})
        report["live"] = {"frames_in": stream.frames_in, "published": stream.published, "dropped": stream.dropped,
                          "latency_ms": latency}
        print(f"live at 25 frames/s: {stream.published} published, {stream.dropped} dropped of {stream.frames_in}")
        print(f"{'stage':<14} {'p50 ms':>9} {'p99 ms':>9}")
        for stage, p in latency.items():
            print(f"{stage:<14} {p['p50']:>9.1f} {p['p99']:>9.1f}")
    ray.shutdown()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average {os.getloadavg()[0]:.1f} on {cores} cores; wrote {RESULTS.relative_to(REPO)}")


def compare_with_model(args, model_overrides: list[str]) -> dict:
    """The model alone (before and after) against the whole pipeline on the same frames."""
    frames = decode(args.frames)
    # The model alone before and after the pipeline: the machine's load drifts (it is shared).
    model_before = model_alone(frames, model_overrides, args.weights, args.max_batch, os.cpu_count())
    pipeline_fps, _ = through_pipeline(
        [f"sources.uris=[{CLIP}]", f"sources.max_frames={len(frames)}", *model_overrides], len(frames))
    model_after = model_alone(frames, model_overrides, args.weights, args.max_batch, os.cpu_count())
    model_fps = (model_before + model_after) / 2
    return {"frames": len(frames), "model_fps": {"before": model_before, "after": model_after, "mean": model_fps},
            "pipeline_fps": pipeline_fps, "ratio": pipeline_fps / model_fps}


def live_run(model_overrides: list[str], frames: int):
    """The clip at its own frame rate in live mode; returns the run summary."""
    config = load_pipeline_config(None, [f"publish.endpoint=tcp://127.0.0.1:{PORT}", "progress=false",
                                         f"sources.uris=[{CLIP}]", f"sources.max_frames={frames}",
                                         "sources.mode=live", *model_overrides])
    return run(config)


if __name__ == "__main__":
    main()

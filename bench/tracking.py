"""Tracking benchmark: our tracker against Roboflow's `trackers` on the very same detections, scored by TrackEval.

    maskstream scenes write /tmp/trk_bench --images 1500 --seed 555000 --frames-per-sequence 150
    python bench/tracking.py --data /tmp/trk_bench [--cache DIR] [--skip-cost] [--min-visibility V --out FILE]
    python bench/tracking.py --only-cost          # the cost per frame alone, updated in the JSON

The data: generated sequences from seeds no training stage used (the default model trained on
seeds 1000-4000 and was evaluated on 777777 and 888888; 555000 gives 10 sequences of 150 frames
at 640x360, 25 frames/s). The default model (configs/default_model.yaml + .npz) runs once over
every frame at its own score threshold, 0.05, and its detections are cached on disk (--cache,
default /tmp/maskstream-track-cache: reruns only track and score). Every tracker is then fed
exactly those detections (boxes, scores, classes; masks for ours) in frame order with the frames'
pts, and its output (the detections it gives a confirmed track id) is scored per class by
TrackEval on masks (MOTS Challenge path; each frame's masks made non-overlapping by score) and
on boxes (MOTChallenge 2D box path): HOTA, DetA, AssA, IDF1, MOTA, IDSW.

Trackers: ours (pipeline/tracking.py; methods bytetrack-box, the default, marked *,
bytetrack-mask and sort, default TrackingConfig otherwise, with every detection's mask colour as
the pipeline's workers attach it; and the default without its colour stage, `reidentify: false`)
and the library's SORT, ByteTrack, OC-SORT and McByte in
box mode (no mask manager, no camera motion compensation: it would need the frames), each with
its defaults, frame_rate 25 and a lost-track buffer of 1 s (ours: max_age_s 1). The library's
trackers ignore classes; each runs as one tracker per class, so that they too never give a car's
id to a person (class-blind, they would only do worse on this per-class scoring). They get the
timestamps, so their Kalman steps scale with the gaps as ours do.

Conditions: every frame; two of every three frames dropped (live-like: only frames 0, 3, 6, ...
are tracked and scored, pts jumping 0.12 s); ground-truth masks and boxes as the detections
(score 1), every frame and with the drop. Plus the tracker's cost per frame at 50 instances at
1280x720 (ground-truth instances of four 1280x720 scenes merged, 50 kept per frame; median CPU
time of this thread per update over the frames after the first 10, three runs, ours in each
method: CPU time, as this machine is shared and wall time counts the other processes' turns too),
and the workers' share of it: `mask_colours` on the same frames (each mask's mean colour and
palette, which the workers compute beside the model for the tracker's appearance cues).

`--min-visibility V` scores only objects showing at least V of themselves (the others are
TrackEval ignore regions / distractors, as in `maskstream track-eval`). The load average is
recorded in the JSON beside the numbers.

Masks are scored for cars and people (the targets; TrackEval's mask path is slow and lanes are
a third of the instances), boxes for cars, people and lanes.

Install of the baselines (`trackers` declares opencv-python, which would overwrite the installed
opencv-python-headless's cv2 and needs libGL; it runs on the headless build):
    pip install --no-deps trackeval==1.3.0 trackers==2.6.1 supervision==0.31.2
    pip install -e ".[tracking]"          # tabulate, pydeprecate, defusedxml, rich, requests
then `pip show opencv-python-headless` is unchanged, `pip show opencv-python` finds nothing, and
`import cv2` works. Prints the tables and writes bench/results/tracking.json.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from models.data.mots import TrackedFrame  # noqa: E402
from models.data.scenes import StreetScene  # noqa: E402
from pipeline import track_eval  # noqa: E402
from pipeline.tracking import METHODS, StreamTracker, TrackingConfig  # noqa: E402
from workers.results import mask_colours  # noqa: E402

RESULTS = REPO / "bench" / "results" / "tracking.json"
FPS = 25.0
CONDITIONS = {"model": (False, None), "model, 2 of 3 dropped": (False, "2of3"),
              "ground truth": (True, None), "ground truth, 2 of 3 dropped": (True, "2of3")}


def library_tracker(name: str):
    """A factory of `update` callables for one of the library's trackers, one tracker per class."""
    import supervision as sv
    import trackers

    def make():
        cls = {"SORT": trackers.SORTTracker, "ByteTrack": trackers.ByteTrackTracker,
               "OC-SORT": trackers.OCSORTTracker, "McByte": trackers.McByteTracker}[name]
        options = {"frame_rate": FPS, "lost_track_buffer": 30}           # 30 frames at 30 fps: 1 s
        if name == "McByte":
            options["enable_cmc"] = False
        per_class: dict[int, object] = {}

        def update(boxes, scores, class_ids, rles, pts, colours=None, palettes=None):   # box mode: masks, colours unused
            ids = np.zeros(len(scores), np.int64)
            for class_id in sorted(set(class_ids.tolist()) | set(per_class)):
                tracker = per_class.setdefault(class_id, cls(**options))
                index = np.flatnonzero(class_ids == class_id)
                detections = sv.Detections(xyxy=boxes[index].astype(np.float32).reshape(-1, 4),
                                           confidence=scores[index].astype(np.float32),
                                           class_id=np.full(len(index), class_id), data={"index": index})
                out = tracker.update(detections, timestamp=pts)
                if len(out) == 0:
                    continue
                found = out.tracker_id >= 0
                # ids unique across the per-class trackers: (library id + 1) * 8 + class
                ids[out.data["index"][found]] = (out.tracker_id[found].astype(np.int64) + 1) * 8 + class_id
            return ids
        return update
    return make


def run_conditions(sequences, class_names, model_detections, data: str, mask_classes=("car", "person"),
                   min_visibility: float = 0.0) -> dict:
    default = TrackingConfig().method
    trackers = {f"ours {m}{'*' if m == default else ''}": (lambda m=m: track_eval.our_tracker(TrackingConfig(method=m)))
                for m in METHODS}
    # the default without its colour stage: what re-identification by mask colour adds
    trackers[f"ours {default}, no reid"] = lambda: track_eval.our_tracker(TrackingConfig(reidentify=False))
    trackers |= {f"trackers {name}": library_tracker(name) for name in ("SORT", "ByteTrack", "OC-SORT", "McByte")}
    gt_detections = track_eval.with_colours(track_eval.ground_truth_detections(sequences), data, sequences)
    out = {}
    for condition, (ground_truth, drop) in CONDITIONS.items():
        start = time.perf_counter()
        detections = gt_detections if ground_truth else model_detections
        # masks for the classes the targets name (TrackEval's mask path is slow: lanes are many), boxes for all
        masked = {k: v for k, v in class_names.items() if v in mask_classes}
        scores = track_eval.evaluate_trackers(sequences, detections, trackers, masked, FPS, drop, ("mask",),
                                              min_visibility)
        boxes = track_eval.evaluate_trackers(sequences, detections, trackers, class_names, FPS, drop, ("box",),
                                             min_visibility)
        out[condition] = {name: {**scores[name], **boxes[name]} for name in trackers}
        print(f"\n== {condition} ({time.perf_counter() - start:.0f} s)")
        print(track_eval.format_scores(out[condition]))
    return out


def cost_frames(count: int = 110, instances: int = 50,
                seeds=(5550, 5551, 5552, 5553)) -> tuple[list[TrackedFrame], list[np.ndarray]]:
    """`count` consecutive 1280x720 frames of ground-truth instances of several scenes merged,
    `instances` kept per frame (the largest), as score-0.9 detections with their mask colours and
    palettes (as the workers compute them); and per frame the first scene's pixels (H, W, 3) uint8."""
    scenes = [StreetScene(seed, 1280, 720) for seed in seeds]
    from pycocotools import mask as mask_utils
    frames, pixels = [], []
    for t in range(count):
        found = []
        for scene in scenes:
            rgb, drawn = scene.frame(1000 + t)
            found += [(inst, rgb) for inst in drawn]
        pixels.append(found[0][1])
        found = sorted(found, key=lambda pair: -int(pair[0].mask.sum()))[:instances]
        rles, colours, palettes = [], [], []
        for inst, rgb in found:
            rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
            rles.append({"size": [720, 1280], "counts": rle["counts"].decode("ascii")})
            colour, palette = mask_colours(rgb, rles[-1:])
            colours.append(colour[0])
            palettes.append(palette[0])
        frames.append(TrackedFrame(np.zeros(len(found), np.int64), np.array([i.class_id for i, _ in found], np.int64),
                                   np.array([i.box for i, _ in found], np.float64), np.full(len(found), 0.9), rles,
                                   colours=np.array(colours).reshape(-1, 3),
                                   palettes=np.array(palettes).reshape(len(found), -1)))
    return frames, pixels


def colour_cost(frames: list[TrackedFrame], pixels: list[np.ndarray], repeats: int = 3) -> dict:
    """The workers' share of the appearance cue: median CPU milliseconds per frame of
    `mask_colours` (each instance's mean colour and palette from its RLE and the frame's pixels,
    as `workers.results.instance_records` calls it) over these frames, after 10 warm-up frames."""
    cpu = []
    for _ in range(repeats):
        for n, (f, rgb) in enumerate(zip(frames, pixels, strict=True)):
            start = time.thread_time()
            mask_colours(rgb, f.rles)
            if n >= 10:
                cpu.append(time.thread_time() - start)
    return {"median_cpu_ms": 1e3 * float(np.median(cpu)), "p90_cpu_ms": 1e3 * float(np.percentile(cpu, 90)),
            "frames": len(cpu), "instances_per_frame": float(np.mean([len(f) for f in frames]))}


def tracker_cost(frames: list[TrackedFrame], repeats: int = 3) -> dict:
    """Median milliseconds per `update` of each of our methods over these frames (after 10 warm-up frames)."""
    out = {}
    for method in METHODS:
        for mask_motion in ("shift", "none") if method == "bytetrack-mask" else ("shift",):
            cpu, wall = [], []
            for _ in range(repeats):
                tracker = StreamTracker(TrackingConfig(method=method, mask_motion=mask_motion))
                for n, f in enumerate(frames):
                    start, start_cpu = time.perf_counter(), time.thread_time()
                    tracker.update(f.boxes, f.scores, f.class_ids, f.rles, n / FPS, colours=f.colours,
                                   palettes=f.palettes)
                    if n >= 10:
                        cpu.append(time.thread_time() - start_cpu)
                        wall.append(time.perf_counter() - start)
            name = method if method != "bytetrack-mask" else f"{method} (mask_motion {mask_motion})"
            out[name] = {"median_cpu_ms": 1e3 * float(np.median(cpu)), "p90_cpu_ms": 1e3 * float(np.percentile(cpu, 90)),
                         "median_wall_ms": 1e3 * float(np.median(wall)), "frames": len(cpu),
                         "instances_per_frame": float(np.mean([len(f) for f in frames]))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="generated sequences (maskstream scenes write --frames-per-sequence)")
    parser.add_argument("--config", default=str(REPO / "configs" / "default_model.yaml"))
    parser.add_argument("--weights", default=str(REPO / "configs" / "default_model.npz"))
    parser.add_argument("--cache", default=str(track_eval.DEFAULT_CACHE), help="where the model's detections are cached")
    parser.add_argument("--skip-cost", action="store_true", help="leave out the cost per frame")
    parser.add_argument("--only-cost", action="store_true",
                        help="measure the cost per frame alone and update it in --out, the scores kept")
    parser.add_argument("--min-visibility", type=float, default=0.0,
                        help="score only objects showing at least this share of themselves (maskstream track-eval's)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.only_cost:
        report = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
        report["cost_measured_on"] = time.strftime("%Y-%m-%d")
        write_cost(report)
        write_report(report, args.out)
        return
    if not args.data:
        parser.error("--data is required (or --only-cost)")
    sequences, class_names = track_eval.load_sequences(args.data)
    detections = track_eval.model_detections(args.config, args.weights, args.data, sequences, args.cache)
    detections = track_eval.with_colours(detections, args.data, sequences)
    report = {"data": args.data, "sequences": len(sequences), "frames": sum(len(s.image_ids) for s in sequences),
              "model": {"config": Path(args.config).name, "weights": Path(args.weights).name, "score_threshold": 0.05,
                        "detections": sum(len(f) for frames in detections.values() for f in frames)},
              "fps": FPS, "tracking_defaults": TrackingConfig().__dict__, "min_visibility": args.min_visibility,
              "load_average_at_start": os.getloadavg(),
              "scores": run_conditions(sequences, class_names, detections, args.data,
                                       min_visibility=args.min_visibility)}
    report["load_average_after_scores"] = os.getloadavg()
    if not args.skip_cost:
        write_cost(report)
    write_report(report, args.out)


def write_report(report: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def write_cost(report: dict) -> None:
    """Measure the cost per frame into `report` and print it."""
    frames, pixels = cost_frames()
    report["cost_per_frame_1280x720"] = tracker_cost(frames)
    report["colour_cost_per_frame_1280x720"] = colour_cost(frames, pixels)
    report["load_average_after_cost"] = os.getloadavg()
    print("\n== cost per frame, 1280x720")
    for name, c in report["cost_per_frame_1280x720"].items():
        print(f"{name:<40} CPU median {c['median_cpu_ms']:.2f} ms  p90 {c['p90_cpu_ms']:.2f} ms  "
              f"wall median {c['median_wall_ms']:.2f} ms  ({c['instances_per_frame']:.0f} instances, {c['frames']} frames)")
    c = report["colour_cost_per_frame_1280x720"]
    print(f"{'workers: mask_colours':<40} CPU median {c['median_cpu_ms']:.2f} ms  p90 {c['p90_cpu_ms']:.2f} ms")


if __name__ == "__main__":
    main()

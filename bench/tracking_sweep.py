"""Tracker settings swept on tuning seeds: how the defaults in configs/default.yaml were picked.

    for s in 556000 557000 558000 559000; do
        maskstream scenes write /tmp/trk_$s --images 1500 --seed $s --frames-per-sequence 150; done
    python bench/tracking_sweep.py --data /tmp/trk_556000,/tmp/trk_557000,/tmp/trk_558000,/tmp/trk_559000 \
        --vary appearance_gate=0.6,0.7,0.8 [--vary reid_share=0.7,0.8,0.9 ...] [--set key=value ...] [--out FILE]

Each data set is a seed of its own (10 sequences of 150 frames each); none of them is the
benchmark's (bench/tracking.py, seed 555000), so that a value picked here is then checked on data
it was not picked on. Each row is one setting: the defaults (TrackingConfig, changed by --set) and
then each value of each --vary on its own (one at a time, not a grid). A row gives TrackEval's box
IDF1 for cars and people on the default model's detections (cached as `maskstream track-eval`
caches them, with the workers' mask colours and palettes), on the same with two of every three
frames dropped (live-like, as bench/tracking.py's condition) and on the exact detections (ground
truth as detections, score 1), each the mean over the data sets, and beside each its change from
the defaults' row. Boxes rather than masks: TrackEval's mask path is ten times slower and the two
rank settings alike here (bench/tracking.py scores both). Prints the table and writes JSON
(bench/results/tracking_sweep.json unless --out).
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
from models.config import from_dict  # noqa: E402
from pipeline import track_eval  # noqa: E402
from pipeline.tracking import TrackingConfig  # noqa: E402

RESULTS = REPO / "bench" / "results" / "tracking_sweep.json"
FPS = 25.0
CLASSES = ("car", "person")
# condition -> (detections, frames dropped): live-like is two of every three frames dropped, as
# bench/tracking.py's "2 of 3 dropped" (a setting that helps at the full frame rate may not there)
CONDITIONS = {"model": ("model", None), "model 2of3": ("model", "2of3"), "exact": ("exact", None)}


def box_idf1(sequences, class_names, detections, config: TrackingConfig, drop: str | None) -> dict[str, float]:
    """TrackEval's box IDF1 per class of CLASSES for our tracker with `config` on these detections,
    the frames `drop` leaves (track_eval.kept_frames)."""
    wanted = {k: v for k, v in class_names.items() if v in CLASSES}
    scores = track_eval.evaluate_trackers(sequences, detections, {"ours": lambda: track_eval.our_tracker(config)},
                                          wanted, FPS, drop, ("box",))["ours"]
    return {name: float(scores["box"][name]["IDF1"]) for name in CLASSES}


def settings(base: dict, vary: list[str]) -> list[tuple[str, dict]]:
    """(label, overrides) per row: the defaults first, then each value of each `key=v1,v2,...` alone."""
    rows = [("defaults" + "".join(f" {k}={v}" for k, v in base.items()), dict(base))]
    for spec in vary:
        key, _, values = spec.partition("=")
        for value in values.split(","):
            overrides = base | track_eval.parse_overrides([f"{key}={value}"])
            rows.append((f"{key.removeprefix('tracking.')}={value}", overrides))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="comma-separated data sets written with --frames-per-sequence")
    parser.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                        help="a TrackingConfig field and the values to try, each alone")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="changes every row's settings, the first row's included")
    parser.add_argument("--config", default=str(REPO / "configs" / "default_model.yaml"))
    parser.add_argument("--weights", default=str(REPO / "configs" / "default_model.npz"))
    parser.add_argument("--cache", default=str(track_eval.DEFAULT_CACHE), help="where the model's detections are cached")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    rows = settings(track_eval.parse_overrides(args.set), args.vary)
    configs = [(label, from_dict(TrackingConfig, overrides, "tracking")) for label, overrides in rows]

    data = []               # per data set: sequences, class names, {condition: detections}
    for path in args.data.split(","):
        sequences, class_names = track_eval.load_sequences(path)
        model = track_eval.model_detections(args.config, args.weights, path, sequences, args.cache)
        exact = track_eval.ground_truth_detections(sequences)
        data.append((sequences, class_names, {condition: track_eval.with_colours(d, path, sequences)
                                              for condition, d in (("model", model), ("exact", exact))}))

    header = "".join(f" {c + ' ' + n:<17}" for c in CONDITIONS for n in CLASSES)
    print(f"{'setting':<36}{header}")
    results = []
    for label, config in configs:
        start = time.perf_counter()
        per_data = [{c: box_idf1(seqs, names, dets[kind], config, drop) for c, (kind, drop) in CONDITIONS.items()}
                    for seqs, names, dets in data]
        mean = {c: {n: float(np.mean([d[c][n] for d in per_data])) for n in CLASSES} for c in CONDITIONS}
        results.append({"setting": label, "tracking": config.__dict__, "box_idf1_mean": mean,
                        "box_idf1_per_data": per_data})
        first = results[0]["box_idf1_mean"]
        cells = "".join(f" {mean[c][n]:.3f} ({mean[c][n] - first[c][n]:+.3f})   " for c in CONDITIONS for n in CLASSES)
        print(f"{label:<36}{cells}  {time.perf_counter() - start:.0f} s", flush=True)
    report = {"data": args.data.split(","), "fps": FPS, "metric": "TrackEval box IDF1, mean over the data sets",
              "model": {"config": Path(args.config).name, "weights": Path(args.weights).name},
              "load_average": os.getloadavg(), "rows": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

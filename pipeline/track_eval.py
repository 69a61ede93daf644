"""`maskstream track-eval`: the model and the tracker over generated sequences, scored by TrackEval.

    maskstream track-eval [--config FILE --weights W] \\
        --data DIR [--method bytetrack-mask] [--drop 2of3] [--gt-detections] [--min-visibility 0.25] \\
        [--set key=value ...] [--cache DIR] --out results.json

DIR (or coco:ANNOTATIONS_JSON:IMAGE_DIR) is a data set written with `maskstream scenes write DIR --images N --seed S
--frames-per-sequence K` (each annotation keeps its object's track id and visibility). The model runs over every
image (`predict(..., masks="rle")`, at the model config's score threshold, 0.05 for the default
model), its detections are cached (--cache, default /tmp/maskstream-track-cache, keyed by the
model and the image files), and a `StreamTracker` per sequence (settings: TrackingConfig,
`--set key=value` for any of them) gives the track ids, fed the frames in order with pts = frame
index / --fps and each detection's mask colour and palette in its image (as the pipeline's workers give them).
`--drop KofN` drops K of every N frames before tracking (live-like: the tracker sees gaps in pts)
and scores the frames kept. `--gt-detections` feeds the ground-truth masks and
boxes (score 1) instead of the model's.

Scores: HOTA (with DetA and AssA), IDF1, MOTA and ID switches per class, on masks (TrackEval's
MOTS Challenge path, with the masks of a frame made non-overlapping by score as MOTS requires)
and on boxes (its MOTChallenge 2D box path), each class evaluated as its own benchmark (ground
truth and results of that class alone). They are TrackEval's numbers; nothing is computed here.
`--min-visibility V` (default 0: score every object) scores only objects showing at least V of
themselves; the others are ignored the way KITTI MOTS and MOTChallenge ignore what cannot be seen
(`trackeval_scores`): a result on them is not a false positive, missing them is not a miss.

TrackEval (`trackeval` on PyPI) comes with the dev extra: pip install -e ".[dev]".
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from models.config import ConfigError, from_dict, model_and_weights
from models.data.mots import Sequence, TrackedFrame, mot_lines, mots_lines, read_sequences, without_overlaps
from models.errors import TrackEvalError, command

from .tracking import StreamTracker, TrackingConfig

KINDS = {"mask": ("MOTSChallenge", 2, 10), "box": ("MotChallenge2DBox", 1, 8)}   # TrackEval dataset, class id it
# scores, class id it ignores (MOTS: an ignore region; MOTChallenge: a distractor)
METRICS = ("HOTA", "DetA", "AssA", "IDF1", "MOTA", "IDSW")
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "maskstream-track-cache"
INSTALL_HINT = 'pip install -e ".[dev]"'

def import_trackeval():
    try:
        import trackeval
    except ImportError:
        raise TrackEvalError(f"TrackEval is not installed: {INSTALL_HINT}") from None
    return trackeval


# -- frames in and out -----------------------------------------------------------------------------

def kept_frames(count: int, drop: str | None) -> np.ndarray:
    """Indices of the frames kept of `count` when dropping `drop` ("KofN": K of every N, the
    first of each N kept; None keeps all)."""
    if not drop:
        return np.arange(count)
    match = re.fullmatch(r"(\d+)of(\d+)", drop)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise TrackEvalError(f"--drop {drop}: expected KofN with 0 <= K < N, for example 2of3")
    k, n = int(match[1]), int(match[2])
    return np.flatnonzero(np.arange(count) % n < n - k)


def track_sequence(frames: list[TrackedFrame], pts: list[float], update) -> list[TrackedFrame]:
    """Detections per frame (track ids unused) -> the tracked objects per frame: `update(boxes,
    scores, class_ids, rles, pts, colours, palettes)` gives each detection's track id (0: untracked, left out)."""
    tracked = []
    for frame, t in zip(frames, pts, strict=True):
        ids = np.asarray(update(frame.boxes, frame.scores, frame.class_ids, frame.rles, t, frame.colours,
                                frame.palettes), np.int64)
        tracked.append(TrackedFrame(ids, frame.class_ids, frame.boxes, frame.scores, frame.rles).select(ids > 0))
    return tracked


def our_tracker(config: TrackingConfig):
    """A fresh StreamTracker's update as `track_sequence` wants it."""
    tracker = StreamTracker(config)
    return lambda boxes, scores, class_ids, rles, pts, colours=None, palettes=None: tracker.update(
        boxes, scores, class_ids, rles, pts, colours=colours, palettes=palettes).track_ids


# -- TrackEval -------------------------------------------------------------------------------------

def _write_benchmark(root: Path, kind: str, class_id: int, ground_truth: dict[str, list[TrackedFrame]],
                     results: dict[str, dict[str, list[TrackedFrame]]], min_visibility: float = 0.0) -> None:
    """TrackEval's folders for one class: root/gt/<seq>/gt/gt.txt, root/trackers/<name>/data/<seq>.txt,
    the class written as the id the dataset scores; ground-truth objects showing less than
    `min_visibility` of themselves as the id it ignores."""
    _, scored_id, ignored_id = KINDS[kind]

    def lines(frames: list[TrackedFrame], gt: bool) -> str:
        out = []
        for n, frame in enumerate(frames, 1):
            if kind == "mask" and not gt:
                frame = without_overlaps(frame)
            frame = frame.select(frame.class_ids == class_id)
            ignored = np.zeros(len(frame), bool)
            if gt and frame.visibility is not None:
                ignored = frame.visibility < min_visibility
            frame = TrackedFrame(frame.track_ids, np.where(ignored, ignored_id, scored_id), frame.boxes, frame.scores,
                                 frame.rles, frame.visibility)
            out += mots_lines(n, frame) if kind == "mask" else mot_lines(n, frame, ground_truth=gt)
        return "".join(line + "\n" for line in out)

    for seq, frames in ground_truth.items():
        path = root / "gt" / seq / "gt" / "gt.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(lines(frames, True))
        for name, sequences in results.items():
            path = root / "trackers" / name / "data" / f"{seq}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(lines(sequences[seq], False))


def trackeval_scores(ground_truth: dict[str, list[TrackedFrame]], results: dict[str, dict[str, list[TrackedFrame]]],
                     class_names: dict[int, str], kinds=tuple(KINDS), min_visibility: float = 0.0) -> dict:
    """TrackEval's scores of each result set against the ground truth, per kind and class:
    {result name: {"mask" | "box": {class name: {HOTA, DetA, AssA, IDF1, MOTA, IDSW, ...}}}}.
    A class with no ground-truth object in any sequence is left out. Ground-truth objects that
    show less than `min_visibility` of themselves (where the ground truth has `visibility`) are
    ignored as KITTI MOTS and MOTChallenge ignore what cannot be seen: TrackEval neither counts
    them as missed nor a result on them as false (masks: an ignore region; boxes: a distractor)."""
    trackeval = import_trackeval()
    scores: dict = {name: {kind: {} for kind in kinds} for name in results}
    lengths = {seq: len(frames) for seq, frames in ground_truth.items()}
    with tempfile.TemporaryDirectory(prefix="maskstream-trackeval-") as tmp:
        for kind in kinds:
            dataset_name = KINDS[kind][0]
            for class_id, class_name in class_names.items():
                if not any((f.class_ids == class_id).any() for frames in ground_truth.values() for f in frames):
                    continue
                root = Path(tmp) / kind / class_name
                _write_benchmark(root, kind, class_id, ground_truth, results, min_visibility)
                dataset_config = {"GT_FOLDER": str(root / "gt"), "TRACKERS_FOLDER": str(root / "trackers"),
                                  "SKIP_SPLIT_FOL": True, "SEQ_INFO": dict(lengths), "PRINT_CONFIG": False,
                                  "TRACKERS_TO_EVAL": list(results), "CLASSES_TO_EVAL": ["pedestrian"]}
                dataset = getattr(trackeval.datasets, dataset_name)(dataset_config)
                evaluator = trackeval.Evaluator({"PRINT_RESULTS": False, "PRINT_CONFIG": False, "OUTPUT_SUMMARY": False,
                                                 "OUTPUT_DETAILED": False, "PLOT_CURVES": False,
                                                 "TIME_PROGRESS": False, "LOG_ON_ERROR": None})
                metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR({"PRINT_CONFIG": False}),
                           trackeval.metrics.Identity({"PRINT_CONFIG": False})]
                with contextlib.redirect_stdout(io.StringIO()):
                    output, _ = evaluator.evaluate([dataset], metrics)
                for name in results:
                    res = output[dataset_name][name]["COMBINED_SEQ"]["pedestrian"]
                    scores[name][kind][class_name] = {
                        "HOTA": float(np.mean(res["HOTA"]["HOTA"])), "DetA": float(np.mean(res["HOTA"]["DetA"])),
                        "AssA": float(np.mean(res["HOTA"]["AssA"])), "IDF1": float(res["Identity"]["IDF1"]),
                        "MOTA": float(res["CLEAR"]["MOTA"]), "IDSW": int(res["CLEAR"]["IDSW"]),
                        "IDR": float(res["Identity"]["IDR"]), "IDP": float(res["Identity"]["IDP"]),
                        "gt_ids": int(res["Count"]["GT_IDs"]), "ids": int(res["Count"]["IDs"])}
    return scores


def format_scores(scores: dict) -> str:
    """A table: a row per result set, kind and class; a column per metric."""
    rows = [f"{'':<24}{'':<6}{'class':<8}" + "".join(f"{m:>8}" for m in METRICS)]
    for name, kinds in scores.items():
        for kind, classes in kinds.items():
            for class_name, s in classes.items():
                values = "".join(f"{s[m]:8d}" if m == "IDSW" else f"{s[m]:8.3f}" for m in METRICS)
                rows.append(f"{name:<24}{kind:<6}{class_name:<8}{values}")
    return "\n".join(rows)


# -- the model's detections, cached ------------------------------------------------------------------

def frame_to_json(frame: TrackedFrame) -> dict:
    return {"boxes": frame.boxes.tolist(), "scores": frame.scores.tolist(), "class_ids": frame.class_ids.tolist(),
            "rles": frame.rles}


def frame_from_json(data: dict) -> TrackedFrame:
    n = len(data["scores"])
    return TrackedFrame(np.zeros(n, np.int64), np.array(data["class_ids"], np.int64).reshape(n),
                        np.array(data["boxes"], np.float64).reshape(n, 4), np.array(data["scores"], np.float64),
                        data["rles"])


def model_detections(config_path: str, weights: str | None, data_dir: str, sequences: list[Sequence],
                     cache_dir: str | Path | None = DEFAULT_CACHE, batch: int = 2,
                     progress: bool = True) -> dict[str, list[TrackedFrame]]:
    """The model's detections (track ids 0) per sequence and frame; read from the cache when the
    same config, weights and data were run before, else computed and cached."""
    from tqdm import tqdm

    from models.data.coco import CocoDataset
    from models.mask_rcnn import load_model
    from models.tools.evaluate import class_to_category

    dataset = CocoDataset(data_dir)
    key = hashlib.sha1()      # the detections depend on the model and the images, not on the annotations
    for path in (config_path, weights):
        if path is not None:
            key.update(Path(path).read_bytes())
    for seq in sequences:
        for image_id in seq.image_ids:
            key.update((dataset.image_dir / dataset.images[image_id]["file_name"]).read_bytes())
    cache = Path(cache_dir) / f"detections-{key.hexdigest()[:16]}.json.gz" if cache_dir else None
    if cache is not None and cache.is_file():
        data = json.loads(gzip.decompress(cache.read_bytes()))
        return {seq: [frame_from_json(f) for f in frames] for seq, frames in data.items()}
    model = load_model(config_path, weights)
    category_of_class = class_to_category(model.config.class_names, dataset)
    detections = {}
    with tqdm(total=sum(len(s.image_ids) for s in sequences), desc="detecting", unit="frame",
              disable=not progress) as bar:
        for seq in sequences:
            frames = []
            for start in range(0, len(seq.image_ids), batch):
                chunk = seq.image_ids[start:start + batch]
                for det in model.predict([dataset.load_image(i) for i in chunk], masks="rle"):
                    known = np.array([int(c) in category_of_class for c in det.class_ids], bool).reshape(-1)
                    frames.append(TrackedFrame(
                        np.zeros(int(known.sum()), np.int64),
                        np.array([category_of_class[int(c)] for c in det.class_ids[known]], np.int64).reshape(-1),
                        np.asarray(det.boxes, np.float64)[known].reshape(-1, 4),
                        np.asarray(det.scores, np.float64)[known],
                        [r for r, k in zip(det.rles, known) if k]))
                bar.update(len(chunk))
            detections[seq.name] = frames
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(gzip.compress(json.dumps(
            {seq: [frame_to_json(f) for f in frames] for seq, frames in detections.items()}).encode()))
    return detections


def with_colours(detections: dict[str, list[TrackedFrame]], data_dir: str,
                 sequences: list[Sequence]) -> dict[str, list[TrackedFrame]]:
    """The detections with each mask's mean colour and palette in its image (`workers.results.mask_colours`,
    what the pipeline's workers attach to every instance for the tracker)."""
    from models.data.coco import CocoDataset
    from workers.results import mask_colours

    dataset = CocoDataset(data_dir)
    def coloured(frame: TrackedFrame, image_id: int) -> TrackedFrame:
        colours, palettes = mask_colours(dataset.load_image(image_id), frame.rles)
        return dataclasses.replace(frame, colours=colours, palettes=palettes)
    return {seq.name: [coloured(frame, image_id) for frame, image_id in zip(detections[seq.name], seq.image_ids,
                                                                             strict=True)]
            for seq in sequences}


def ground_truth_detections(sequences: list[Sequence]) -> dict[str, list[TrackedFrame]]:
    """The ground truth as detections: score 1, track ids 0."""
    return {s.name: [TrackedFrame(np.zeros(len(f), np.int64), f.class_ids, f.boxes, f.scores, f.rles, f.visibility)
                     for f in s.ground_truth] for s in sequences}


def load_sequences(data_dir: str) -> tuple[list[Sequence], dict[int, str]]:
    """The data set's sequences and its class names by category id."""
    from models.data.coco import parse_spec, read_coco_json
    data = read_coco_json(parse_spec(data_dir)[0])
    return read_sequences(data), {c["id"]: c["name"] for c in data["categories"]}


def evaluate_trackers(sequences: list[Sequence], detections: dict[str, list[TrackedFrame]], trackers: dict,
                      class_names: dict[int, str], fps: float, drop: str | None = None, kinds=tuple(KINDS),
                      min_visibility: float = 0.0) -> dict:
    """Run each tracker (name -> a factory of `update` callables, one per sequence) over the
    detections (of the frames kept by `drop`) and score it with TrackEval (`trackeval_scores`)."""
    ground_truth, results = {}, {name: {} for name in trackers}
    for seq in sequences:
        keep = kept_frames(len(seq.ground_truth), drop)
        ground_truth[seq.name] = [seq.ground_truth[i] for i in keep]
        pts = [seq.frame_indices[i] / fps for i in keep]
        for name, factory in trackers.items():
            results[name][seq.name] = track_sequence([detections[seq.name][i] for i in keep], pts, factory())
    return trackeval_scores(ground_truth, results, class_names, kinds, min_visibility)


def parse_overrides(assignments: list[str]) -> dict:
    """`key=value` (value read as YAML) -> a mapping for TrackingConfig."""
    data = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {assignment}: expected key=value, for example max_age_s=2")
        data[key.strip().removeprefix("tracking.")] = yaml.safe_load(text)
    return data


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskstream track-eval", description=__doc__.split("\n")[0].split(": ", 1)[1])
    parser.add_argument("--config", help="model configuration YAML (default: the embedded default model)")
    parser.add_argument("--weights", help="weights file (.npz); default: the embedded model's own, or with --config "
                                          "the config's seeded random weights")
    parser.add_argument("--data", required=True, help="a data set written with --frames-per-sequence")
    parser.add_argument("--method", help="tracking.method (default: TrackingConfig's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any TrackingConfig field")
    parser.add_argument("--drop", help="drop K of every N frames before tracking, e.g. 2of3")
    parser.add_argument("--gt-detections", action="store_true", help="track the ground truth instead of the model")
    parser.add_argument("--min-visibility", type=float, default=0.0,
                        help="score only objects showing at least this share of themselves (default 0: all)")
    parser.add_argument("--fps", type=float, default=25.0, help="frames per second of the scenes (pts = index / fps)")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="where model detections are cached ('' for none)")
    parser.add_argument("--batch", type=int, default=2, help="frames per model call")
    parser.add_argument("--out", default="track_eval.json", help="where to write the scores (JSON)")
    args = parser.parse_args(argv)
    args.config, args.weights = model_and_weights(args.config, args.weights)
    overrides = parse_overrides(args.set)
    if args.method:
        overrides["method"] = args.method
    config = from_dict(TrackingConfig, overrides, "tracking")
    config.validate("tracking")
    kept_frames(1, args.drop)
    if not 0 <= args.min_visibility <= 1:
        raise TrackEvalError(f"--min-visibility {args.min_visibility}: must be in [0, 1]")
    import_trackeval()
    if args.weights is None and not args.gt_detections:
        print(f"no --weights: tracking the detections of {args.config}'s seeded random weights")
    sequences, class_names = load_sequences(args.data)
    detections = (ground_truth_detections(sequences) if args.gt_detections else
                  model_detections(args.config, args.weights, args.data, sequences, args.cache or None, args.batch))
    detections = with_colours(detections, args.data, sequences)
    scores = evaluate_trackers(sequences, detections, {config.method: lambda: our_tracker(config)},
                               class_names, args.fps, args.drop, min_visibility=args.min_visibility)
    report = {"config": args.config, "weights": args.weights, "data": args.data, "drop": args.drop,
              "detections": "ground truth" if args.gt_detections else "model", "fps": args.fps,
              "min_visibility": args.min_visibility,
              "sequences": len(sequences), "frames": sum(len(s.image_ids) for s in sequences),
              "tracking": dataclasses.asdict(config), "scores": scores[config.method]}
    try:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    except OSError as error:
        raise TrackEvalError(f"{args.out}: cannot write the report ({error.strerror})") from None
    print(format_scores(scores))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

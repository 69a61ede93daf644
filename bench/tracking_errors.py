"""Where the tracker loses identity: each ground-truth object followed through our tracker.

    python bench/tracking_errors.py --data /tmp/trkb_data [--gt-detections] [--class car] [--top 12] \
        [--set key=value ...]

The default model's detections (cached as `maskstream track-eval` caches them) or, with
--gt-detections, the exact masks and boxes, go through a `StreamTracker` with the pipeline's
colours and palettes, as in bench/tracking.py. Each frame, the tracked detections (id > 0) of the
class are matched one to one to its ground-truth objects by box IoU >= 0.5 (Hungarian); then,
per sequence, ground-truth objects and track ids are matched for the most shared frames, as
IDF1 does. Printed: an IDF1 from those counts (within 0.003 of TrackEval's box IDF1 on the
benchmark's data; TrackEval's numbers are bench/tracking.py's), how many object-frames it does
not count and of those how many had no tracked detection at all rather than the wrong id, those
split by what the detector gave there (`why_untracked`: no detection, a weak one, one detection
given to another object, or one the tracker left out; each also counted for the objects showing
at least a quarter of themselves), and the objects that
lose most: their ids over time (frame, id, how many frames, visibility from-to, box) and which
objects each of those ids also followed. This is how docs/tracking.md's root causes were found.
"""
import argparse
import collections
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from models.config import from_dict  # noqa: E402
from pipeline import track_eval  # noqa: E402
from pipeline.tracking import TrackingConfig, box_iou  # noqa: E402

FPS = 25.0
VISIBLE = 0.25       # the untracked object-frames are split at this visibility too (as --min-visibility)


def follow(sequence, detections, config: TrackingConfig, class_id: int):
    """One sequence through a fresh tracker (`track_eval.track_sequence`) -> per ground-truth
    object its (frame, track id or 0, visibility, box, why) in every frame it is in, and per track
    id the frames it was output. `why` says, for a frame where no tracked detection matched the
    object, what the detector gave there (`why_untracked`); None where one matched."""
    pts = [index / FPS for index in sequence.frame_indices]
    tracked_frames = track_eval.track_sequence(detections, pts, track_eval.our_tracker(config))
    history, output = collections.defaultdict(list), collections.Counter()
    for i, (truth, tracked, raw) in enumerate(zip(sequence.ground_truth, tracked_frames, detections)):
        tracked = tracked.select(tracked.class_ids == class_id)
        raw = raw.select(raw.class_ids == class_id)
        objects = np.flatnonzero(truth.class_ids == class_id)
        output.update(int(t) for t in tracked.track_ids)
        matched = {}
        if len(objects) and len(tracked):
            iou = box_iou(truth.boxes[objects], tracked.boxes)
            for a, b in zip(*linear_sum_assignment(-iou)):
                if iou[a, b] >= 0.5:
                    matched[objects[a]] = int(tracked.track_ids[b])
        for k in objects:
            why = None if k in matched else why_untracked(truth.boxes[k], raw, tracked, config)
            history[int(truth.track_ids[k])].append((i, matched.get(k, 0), float(truth.visibility[k]),
                                                     truth.boxes[k].round().astype(int).tolist(), why))
    return history, output


UNTRACKED = {
    "missed": "no detection of the class at box IoU >= 0.5",
    "weak": "its detection scored under low_score",
    "shared": "its detection is in a track, as another object's (one detection for two objects)",
    "left out": "a detection of it from low_score on was in no track (a track's first frame, or not matched)",
}


def why_untracked(box: np.ndarray, raw, tracked, config: TrackingConfig) -> str:
    """Why a ground-truth object's box (4,) matched no tracked detection in its frame, given the
    frame's detections of its class before tracking (`raw`) and after (`tracked`): a key of
    UNTRACKED. The best-scoring detection at box IoU >= 0.5 decides: none ("missed"), one under
    `low_score` ("weak"), one the tracker output but that the frame's one-to-one matching gave
    to another object ("shared"), or one the tracker did not output ("left out")."""
    if not len(raw):
        return "missed"
    near = np.flatnonzero(box_iou(box[None], raw.boxes)[0] >= 0.5)
    if not len(near):
        return "missed"
    best = near[np.argmax(raw.scores[near])]
    if raw.scores[best] < config.low_score:
        return "weak"
    output = {tuple(b) for b in tracked.boxes.tolist()}
    return "shared" if tuple(raw.boxes[best].tolist()) in output else "left out"


def identity_matches(history: dict, output: collections.Counter) -> dict[int, int]:
    """Ground-truth object -> the track id it shares most frames with under a one-to-one matching
    that maximises the frames shared (IDF1's)."""
    objects, ids = list(history), list(output)
    shared = np.zeros((len(objects), len(ids)))
    for n, obj in enumerate(objects):
        for _, track_id, _, _, _ in history[obj]:
            if track_id:
                shared[n, ids.index(track_id)] += 1
    if not shared.size:
        return {}
    rows, cols = linear_sum_assignment(-shared)
    return {objects[r]: ids[c] for r, c in zip(rows, cols) if shared[r, c] > 0}


def runs_of(history: list) -> list[list]:
    """An object's frames -> runs of the same id: [first frame, id, frames, visibility first, last, box]."""
    runs = []
    for frame, track_id, visibility, box, _ in history:
        if runs and runs[-1][1] == track_id:
            runs[-1][2] += 1
            runs[-1][4] = visibility
        else:
            runs.append([frame, track_id, 1, visibility, visibility, box])
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a data set written with --frames-per-sequence")
    parser.add_argument("--gt-detections", action="store_true", help="track the exact masks instead of the model's")
    parser.add_argument("--class", dest="class_name", default="car", help="the class to follow (default car)")
    parser.add_argument("--top", type=int, default=12, help="how many of the objects that lose most to show")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any TrackingConfig field")
    args = parser.parse_args(argv)
    config = from_dict(TrackingConfig, track_eval.parse_overrides(args.set), "tracking")
    config.validate("tracking")
    sequences, class_names = track_eval.load_sequences(args.data)
    class_id = {name: k for k, name in class_names.items()}[args.class_name]
    if args.gt_detections:
        detections = track_eval.ground_truth_detections(sequences)
    else:
        detections = track_eval.model_detections(str(REPO / "configs" / "default_model.yaml"),
                                                 str(REPO / "configs" / "default_model.npz"), args.data, sequences)
    detections = track_eval.with_colours(detections, args.data, sequences)

    truth_frames = output_frames = counted = unmatched = 0
    untracked = collections.Counter()      # (why, showing at least VISIBLE of itself) -> object-frames
    losers = []
    for sequence in sequences:
        history, output = follow(sequence, detections[sequence.name], config, class_id)
        best = identity_matches(history, output)
        owners = collections.defaultdict(list)       # track id -> (frame, object) it followed
        for obj, frames in history.items():
            for frame, track_id, _, _, _ in frames:
                if track_id:
                    owners[track_id].append((frame, obj))
        truth_frames += sum(len(frames) for frames in history.values())
        output_frames += sum(output.values())
        for obj, frames in history.items():
            kept = sum(1 for _, track_id, _, _, _ in frames if track_id and track_id == best.get(obj))
            missing = sum(1 for _, track_id, _, _, _ in frames if not track_id)
            for _, track_id, visibility, _, why in frames:
                if not track_id:
                    untracked[why, visibility >= VISIBLE] += 1
            counted += kept
            unmatched += missing
            if kept < len(frames):
                losers.append((len(frames) - kept, missing, sequence.name, obj, frames, owners))

    lost = truth_frames - counted
    print(f"{args.class_name}: IDF1 {2 * counted / max(truth_frames + output_frames, 1):.4f} "
          f"({truth_frames} object-frames, {output_frames} tracked detections)")
    print(f"object-frames not counted: {lost}; with no tracked detection: {unmatched}; with another object's id "
          f"or a second id of their own: {lost - unmatched}")
    for why, meaning in UNTRACKED.items():
        print(f"  {untracked[why, False] + untracked[why, True]:5d} {why}: {meaning} "
              f"({untracked[why, True]} of them showing at least {VISIBLE:.0%} of themselves)")
    for loss, missing, name, obj, frames, owners in sorted(losers, key=lambda e: -e[0])[:args.top]:
        runs = runs_of(frames)
        print(f"{loss:4d} lost ({missing} untracked) {name} object {obj}: "
              + " | ".join(f"f{first} id{tid} x{n} vis {v0:.2f}-{v1:.2f} {box}" for first, tid, n, v0, v1, box in runs[:8])
              + (" ..." if len(runs) > 8 else ""))
        for track_id in sorted({r[1] for r in runs if r[1]}):
            spans = []
            for frame, other in sorted(owners[track_id]):
                if spans and spans[-1][0] == other and spans[-1][2] >= frame - 3:
                    spans[-1][2] = frame
                else:
                    spans.append([other, frame, frame])
            print(f"       id{track_id} followed " + ", ".join(f"object {o} f{a}-{b}" for o, a, b in spans))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ground truth for tracking (models/data/mots.py) and its evaluation with TrackEval (pipeline/track_eval.py)."""
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from models.data.mots import TrackedFrame, mot_lines, mots_lines, read_sequences, without_overlaps, write_ground_truth
from models.data.scenes import write_dataset
from pipeline import track_eval
from pipeline.track_eval import kept_frames, trackeval_scores
from pipeline.tracking import TrackingConfig
from tests.bench_helpers import load_bench

pytest.importorskip("trackeval", reason=track_eval.INSTALL_HINT)

CLASS_NAMES = {1: "car", 2: "person", 3: "lane"}


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    """Two generated sequences of 12 frames at 320x180."""
    root = tmp_path_factory.mktemp("sequences")
    path = write_dataset(root, images=24, seed=555123, width=320, height=180, frames_per_sequence=12, progress=False)
    return read_sequences(json.loads(path.read_text()))


def test_sequences_and_ground_truth_files(sequences, tmp_path):
    assert [s.name for s in sequences] == ["seq-0000", "seq-0001"]
    assert all(len(s.ground_truth) == 12 for s in sequences)
    assert sequences[0].frame_indices == list(range(sequences[0].frame_indices[0], sequences[0].frame_indices[0] + 12))
    write_ground_truth(sequences, tmp_path)
    seq = sequences[0]
    lines = (tmp_path / "seq-0000.mots.txt").read_text().splitlines()
    assert len(lines) == sum(len(f) for f in seq.ground_truth)
    frame, tid, cls, h, w, counts = lines[0].split(" ")
    first = seq.ground_truth[0]
    assert (int(frame), int(tid), int(cls), int(h), int(w)) == (1, first.track_ids[0], first.class_ids[0], 180, 320)
    decoded = mask_utils.decode({"size": [180, 320], "counts": counts.encode()})
    assert (decoded == mask_utils.decode(first.rles[0])).all()
    box_line = (tmp_path / "seq-0000.mot.txt").read_text().splitlines()[0].split(",")
    x1, y1, x2, y2 = first.boxes[0]
    assert box_line[:2] == ["1", str(first.track_ids[0])] and box_line[6:8] == ["1", str(first.class_ids[0])]
    assert float(box_line[8]) == pytest.approx(first.visibility[0], abs=1e-3)      # MOT's visibility column
    assert np.allclose([float(v) for v in box_line[2:6]], [x1, y1, x2 - x1, y2 - y1], atol=0.01)
    # ids persist: a scene object keeps its track id from frame to frame
    assert len(set(seq.ground_truth[0].track_ids) & set(seq.ground_truth[1].track_ids)) >= len(seq.ground_truth[0]) - 2


def test_without_overlaps_gives_each_pixel_to_the_best_score():
    a = np.zeros((20, 30), np.uint8)
    a[2:10, 2:12] = 1
    b = np.zeros((20, 30), np.uint8)
    b[5:15, 8:20] = 1
    c = a.copy()                                  # wholly under a: dropped
    rles = [mask_utils.encode(np.asfortranarray(m)) for m in (a, b, c)]
    frame = TrackedFrame(np.array([1, 2, 3]), np.array([2, 2, 2]), np.zeros((3, 4)), np.array([0.6, 0.9, 0.5]), rles)
    out = without_overlaps(frame)
    assert out.track_ids.tolist() == [1, 2]
    kept_a, kept_b = (mask_utils.decode(r).astype(bool) for r in out.rles)
    assert (kept_b == b.astype(bool)).all()
    assert (kept_a == (a.astype(bool) & ~b.astype(bool))).all()
    assert mots_lines(3, out)[1].startswith("3 2 2 20 30 ")
    assert mot_lines(3, out)[0] == "3,1,0.00,0.00,0.00,0.00,0.6000,-1,-1,-1"


def test_trackeval_scores_ground_truth_perfectly_and_an_id_switch_lower(sequences):
    ground_truth = {s.name: s.ground_truth for s in sequences}
    # one id switch: the person of sequence 0 seen longest takes a new id from frame 6 on
    seq = sequences[0]
    counts = {}
    for frame in seq.ground_truth:
        for tid, cls in zip(frame.track_ids, frame.class_ids):
            if cls == 2:
                counts[tid] = counts.get(tid, 0) + 1
    victim = max(counts, key=counts.get)
    assert counts[victim] >= 8
    switched = []
    for n, frame in enumerate(seq.ground_truth):
        ids = np.where((frame.track_ids == victim) & (n >= 6), 999_999, frame.track_ids)
        switched.append(TrackedFrame(ids, frame.class_ids, frame.boxes, frame.scores, frame.rles))
    results = {"perfect": ground_truth, "switch": {**ground_truth, seq.name: switched}}
    scores = trackeval_scores(ground_truth, results, CLASS_NAMES)
    for kind in ("mask", "box"):
        assert set(scores["perfect"][kind]) == {"car", "person", "lane"}
        for class_name, s in scores["perfect"][kind].items():
            assert s["HOTA"] == pytest.approx(1.0) and s["IDF1"] == pytest.approx(1.0), (kind, class_name)
            assert s["MOTA"] == pytest.approx(1.0) and s["IDSW"] == 0
        person = scores["switch"][kind]["person"]
        assert person["IDSW"] == 1
        assert person["IDF1"] < 0.99 and person["HOTA"] < 0.99
        assert scores["switch"][kind]["car"]["IDF1"] == pytest.approx(1.0)


def test_gt_detections_through_the_tracker_score_high(sequences):
    """The whole path: ground truth as detections, our tracker, TrackEval."""
    detections = track_eval.ground_truth_detections(sequences)
    scores = track_eval.evaluate_trackers(sequences, detections,
                                          {"ours": lambda: track_eval.our_tracker(track_eval.TrackingConfig())},
                                          CLASS_NAMES, fps=25.0)
    for kind in ("mask", "box"):
        for class_name in ("car", "person"):
            assert scores["ours"][kind][class_name]["IDF1"] > 0.9


def test_kept_frames():
    assert kept_frames(7, None).tolist() == list(range(7))
    assert kept_frames(7, "2of3").tolist() == [0, 3, 6]
    assert kept_frames(5, "1of2").tolist() == [0, 2, 4]
    with pytest.raises(track_eval.TrackEvalError, match="--drop 3of3"):
        kept_frames(5, "3of3")


def test_command_line_error_is_one_line(capsys, tmp_path):
    code = track_eval.main(["--config", "configs/default_model.yaml", "--data", str(tmp_path / "missing"),
                            "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "missing" in err
    code = track_eval.main(["--config", "configs/default_model.yaml", "--data", str(tmp_path),
                            "--set", "max_age_s=-2", "--out", str(tmp_path / "o.json")])
    assert code == 2 and capsys.readouterr().err.strip() == "error: tracking.max_age_s: must be >= 0"


def test_min_visibility_ignores_what_barely_shows_instead_of_counting_it_missed(sequences):
    """A prediction without the objects showing less than half of themselves is missing them at
    --min-visibility 0 and perfect at 0.5 (they are ignore regions / distractors), masks and boxes."""
    ground_truth = {s.name: s.ground_truth for s in sequences}
    assert any((f.visibility < 0.5).any() for frames in ground_truth.values() for f in frames)
    seen = {name: [f.select(f.visibility >= 0.5) for f in frames] for name, frames in ground_truth.items()}
    classes = {1: "car", 2: "person"}
    everything = trackeval_scores(ground_truth, {"seen": seen}, classes)["seen"]
    visible = trackeval_scores(ground_truth, {"seen": seen}, classes, min_visibility=0.5)["seen"]
    for kind in ("mask", "box"):
        assert min(everything[kind][c]["IDF1"] for c in classes.values()) < 0.999
        for class_name in classes.values():
            assert visible[kind][class_name]["HOTA"] == pytest.approx(1.0), (kind, class_name)
            assert visible[kind][class_name]["IDF1"] == pytest.approx(1.0), (kind, class_name)


def _frame(boxes, scores, class_ids=None) -> TrackedFrame:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    n = len(boxes)
    return TrackedFrame(np.arange(1, n + 1), np.ones(n, np.int64) if class_ids is None else np.asarray(class_ids),
                        boxes, np.asarray(scores, np.float64).reshape(-1), [None] * n)


def test_tracking_errors_says_what_the_detector_gave_where_no_track_matched():
    errors = load_bench("tracking_errors")
    config = TrackingConfig(low_score=0.5)
    car = np.array([100.0, 100.0, 140.0, 130.0])
    same = [100.0, 101.0, 140.0, 131.0]        # box IoU 0.94 with the car
    beside = [120.0, 100.0, 160.0, 130.0]      # box IoU 0.33: not a detection of it
    nothing = _frame(np.zeros((0, 4)), [])
    assert errors.why_untracked(car, nothing, nothing, config) == "missed"
    assert errors.why_untracked(car, _frame([beside], [0.99]), nothing, config) == "missed"
    assert errors.why_untracked(car, _frame([same], [0.3]), nothing, config) == "weak"
    # the best-scoring detection at IoU >= 0.5 decides, not the best-placed: a confident one (IoU
    # 0.95) beside a weak one exactly on the car
    both = _frame([car, [101.0, 100.0, 141.0, 130.0]], [0.3, 0.9])
    assert errors.why_untracked(car, both, nothing, config) == "left out"
    assert errors.why_untracked(car, both, _frame([[101.0, 100.0, 141.0, 130.0]], [0.9]), config) == "shared"
    assert errors.why_untracked(car, both, _frame([car], [0.3]), config) == "left out"
    assert errors.why_untracked(car, _frame([same], [0.3]), nothing, TrackingConfig(low_score=0.2)) == "left out"

"""pipeline/tracking.py: the per-stream tracker on hand-made sequences."""
from dataclasses import replace

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from models.config import ConfigError
from pipeline.tracking import (
    METHODS,
    StreamTracker,
    TrackingConfig,
    TrackingStage,
    colour_weights,
    palette_share,
    shift_masks,
    tracking_config,
)
from workers.results import PALETTE_BINS, mask_colours, palette_cell, rle_runs

FPS = 25.0
H, W = 120, 400
CAR, PERSON = 1, 2


def rect_rle(box) -> dict:
    """A filled rectangle (x1 y1 x2 y2, clipped to the frame) as a compressed RLE with str counts."""
    mask = np.zeros((H, W), np.uint8)
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    mask[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def step(tracker, objects, pts, masks=True):
    """objects: list of (box, class id, score) -> the tracker's TrackStep for that frame."""
    boxes = np.array([o[0] for o in objects], np.float64).reshape(-1, 4)
    classes = np.array([o[1] for o in objects], np.int64)
    scores = np.array([o[2] if len(o) > 2 else 0.9 for o in objects], np.float64)
    rles = [rect_rle(b) for b in boxes] if masks else None
    return tracker.update(boxes, scores, classes, rles, pts)


def walker(x0, vx, y=40.0, w=20.0, h=40.0):
    return lambda f: (x0 + vx * f, y, x0 + vx * f + w, y + h)


@pytest.mark.parametrize("method", METHODS)
def test_objects_crossing_keep_their_ids(method):
    """Two people walk through each other (same size, same row): the motion model carries each
    through the frames where their boxes coincide; a tracker matching on the last box alone
    swaps them at the crossing."""
    a, b = walker(100, 4.0), walker(220, -4.0)            # they meet at frame 15
    tracker = StreamTracker(TrackingConfig(method=method))
    ids_a, ids_b = [], []
    for f in range(31):
        ids = step(tracker, [(a(f), PERSON), (b(f), PERSON)], f / FPS).track_ids
        ids_a.append(ids[0])
        ids_b.append(ids[1])
    assert set(ids_a) == {ids_a[0]} and set(ids_b) == {ids_b[0]} and ids_a[0] != ids_b[0], (ids_a, ids_b)
    assert {ids_a[0], ids_b[0]} == {1, 2}


def test_missed_frames_keep_the_id():
    """A walker undetected for 6 frames (0.24 s < max_age 1 s) and found again 30 px on, past its
    own width: the same id, found through the predicted box."""
    a = walker(50, 5.0)
    tracker = StreamTracker(TrackingConfig())
    first = [step(tracker, [(a(f), PERSON)], f / FPS).track_ids[0] for f in range(10)]
    for f in range(10, 16):
        assert step(tracker, [], f / FPS).ended.size == 0
    later = [step(tracker, [(a(f), PERSON)], f / FPS).track_ids[0] for f in range(16, 22)]
    assert set(first) == set(later) == {1}


def test_track_gone_longer_than_max_age_ends_and_a_new_id_follows():
    tracker = StreamTracker(TrackingConfig(max_age_s=1.0, min_hits=1))
    box = (100, 40, 130, 80)
    assert [step(tracker, [(box, CAR)], f / FPS).track_ids[0] for f in range(5)] == [1] * 5
    ended_at = {}
    for f in range(5, 40):                                 # last seen at frame 4 (0.16 s)
        ended = step(tracker, [], f / FPS).ended
        if ended.size:
            ended_at[f] = ended.tolist()
    assert ended_at == {30: [1]}                           # 1.2 s - 0.16 s > 1 s first at frame 30
    assert step(tracker, [(box, CAR)], 40 / FPS).track_ids.tolist() == [2]
    assert tracker.finish().tolist() == [2]
    assert len(tracker) == 0


def test_unseen_less_than_max_age_is_not_ended():
    tracker = StreamTracker(TrackingConfig(max_age_s=1.0, min_hits=1))
    box = (100, 40, 130, 80)
    step(tracker, [(box, CAR)], 0.0)
    assert step(tracker, [], 0.99).ended.size == 0
    assert step(tracker, [(box, CAR)], 1.0).track_ids.tolist() == [1]


@pytest.mark.parametrize("method", METHODS)
def test_classes_never_share_an_id(method):
    """A parked car is hidden for a few frames while a person of the same box stands exactly
    where it was: a class-blind tracker gives the person the car's id."""
    car = (200, 30, 240, 90)
    tracker = StreamTracker(TrackingConfig(method=method))
    car_ids = [step(tracker, [(car, CAR)], f / FPS).track_ids[0] for f in range(5)]
    person_ids = [step(tracker, [(car, PERSON)], f / FPS).track_ids[0] for f in range(5, 10)]
    car_ids += [step(tracker, [(car, CAR)], f / FPS).track_ids[0] for f in range(10, 12)]
    assert set(car_ids) == {1}
    assert 1 not in person_ids and set(person_ids) == {0, 2}    # unconfirmed at first, then its own


def run_with_gaps(pts_of_frame):
    """A fast walker (10 px a frame, 20 px wide) seen in frames 0-9, then only every third frame."""
    a = walker(20, 10.0)
    frames = list(range(10)) + list(range(12, 33, 3))
    tracker = StreamTracker(TrackingConfig())
    return [step(tracker, [(a(f), PERSON)], pts_of_frame(f, n)).track_ids[0] for n, f in enumerate(frames)]


def test_dropped_frames_are_a_gap_not_a_teleport():
    """Two of every three frames dropped: with the time between frames from pts the prediction
    lands on the walker 30 px on; a model stepping one frame per update (pts read as
    consecutive) predicts 10 px on and loses it: each detection after the gap starts a track
    that is missed again at the next one, so none is confirmed."""
    assert run_with_gaps(lambda f, n: f / FPS) == [1] * 17
    assert run_with_gaps(lambda f, n: n / FPS) == [1] * 10 + [0] * 7


def scene(seed: int, frames: int = 40, count: int = 12):
    """Random walkers of random classes, some detections weak, some missing."""
    rng = np.random.default_rng(seed)
    start = np.c_[rng.uniform(0, W - 40, count), rng.uniform(0, H - 50, count)]
    velocity = rng.normal(0, 3, (count, 2))
    size = rng.uniform(10, 40, (count, 2))
    classes = rng.integers(1, 4, count)
    out = []
    for f in range(frames):
        objects = []
        for k in range(count):
            if rng.random() < 0.1:
                continue
            x, y = start[k] + velocity[k] * f
            objects.append(((x, y, x + size[k, 0], y + size[k, 1]), classes[k], rng.uniform(0.2, 1.0)))
        out.append(objects)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_same_detections_same_ids(method):
    """Two trackers (one per stream) fed the same detections give the same ids and ends, from 1."""
    frames = scene(3)
    runs = []
    for _ in range(2):
        tracker = StreamTracker(TrackingConfig(method=method))
        steps = [step(tracker, objects, f / FPS) for f, objects in enumerate(frames)]
        runs.append(([s.track_ids.tolist() for s in steps], [s.ended.tolist() for s in steps], tracker.finish().tolist()))
    assert runs[0] == runs[1]
    ids = sorted({i for frame in runs[0][0] for i in frame} - {0})
    assert ids == list(range(1, len(ids) + 1))


def test_track_ids_are_unique_within_a_frame_and_class_consistent():
    frames = scene(5, frames=60, count=20)
    tracker = StreamTracker(TrackingConfig())
    class_of = {}
    for f, objects in enumerate(frames):
        ids = step(tracker, objects, f / FPS).track_ids
        tracked = ids[ids > 0]
        assert len(set(tracked.tolist())) == len(tracked)
        for i, obj in zip(ids, objects):
            if i > 0:
                assert class_of.setdefault(int(i), obj[1]) == obj[1]


def test_weak_detection_continues_a_track_but_never_starts_one():
    tracker = StreamTracker(TrackingConfig(min_hits=1, low_score=0.1))
    box = (100, 40, 130, 80)
    assert step(tracker, [(box, CAR, 0.9)], 0.0).track_ids.tolist() == [1]
    assert step(tracker, [(box, CAR, 0.3)], 1 / FPS).track_ids.tolist() == [1]      # stage 2
    assert step(tracker, [((300, 40, 330, 80), CAR, 0.3)], 2 / FPS).track_ids.tolist() == [0]
    sort = StreamTracker(TrackingConfig(method="sort", min_hits=1, low_score=0.1))
    step(sort, [(box, CAR, 0.9)], 0.0)
    assert step(sort, [(box, CAR, 0.3)], 1 / FPS).track_ids.tolist() == [0]         # sort: one stage only


def test_mask_affinity_separates_boxes_that_overlap():
    """Two L-shaped people whose boxes coincide but whose masks do not: with masks each keeps its
    own track when the detections come in the other order."""
    def l_mask(flip):
        m = np.zeros((H, W), np.uint8)
        m[20:80, 100:110] = 1
        m[70:80, 100:160] = 1
        if flip:
            m[20:80, 100:160] = 1 - m[20:80, 100:160]
        r = mask_utils.encode(np.asfortranarray(m))
        return {"size": [H, W], "counts": r["counts"].decode("ascii")}
    box = np.array([[100, 20, 160, 80], [100, 20, 160, 80]], float)
    masks = [l_mask(False), l_mask(True)]
    tracker = StreamTracker(TrackingConfig(method="bytetrack-mask", min_hits=1))
    first = tracker.update(box, [0.95, 0.9], [PERSON, PERSON], masks, 0.0).track_ids
    second = tracker.update(box, [0.95, 0.9], [PERSON, PERSON], masks[::-1], 1 / FPS).track_ids
    assert first.tolist() == [1, 2] and second.tolist() == [2, 1]


def test_rle_runs_and_shifted_masks_match_pycocotools():
    rng = np.random.default_rng(0)
    masks = [(rng.random((37, 53)) < 0.3), np.ones((37, 53), bool), np.zeros((37, 53), bool)]
    block = np.zeros((37, 53), bool)
    block[5:30, 10:40] = True
    masks.append(block)
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    for mask, runs, rle in zip(masks, rle_runs(rles), rles):
        assert (np.repeat(np.arange(len(runs)) % 2, runs).reshape(53, 37).T == mask).all()
    offsets = np.array([(7, 0), (-12, 0), (0, 3), (60, 0), (-3, -2), (0, 0)])
    moved_all = shift_masks(rle_runs([rles[3]] * len(offsets)), 37, 53, offsets)
    for (dx, dy), moved in zip(offsets, moved_all):
        moved = mask_utils.decode(moved).astype(bool)
        expected = np.zeros_like(block)
        expected[max(5 + dy, 0):min(30 + dy, 37), max(10 + dx, 0):min(40 + dx, 53)] = True
        assert (moved == expected).all(), (dx, dy)


def test_config_is_validated_with_the_key_named():
    assert tracking_config({"method": "sort", "max_age_s": 2}).max_age_s == 2
    with pytest.raises(ConfigError, match=r"^tracking\.method: must be one of"):
        tracking_config({"method": "deepsort"})
    with pytest.raises(ConfigError, match=r"^tracking\.max_age_s: must be >= 0"):
        tracking_config({"max_age_s": -1})
    with pytest.raises(ConfigError, match=r"^tracking\.low_score"):
        tracking_config({"low_score": 0.7, "high_score": 0.5})
    with pytest.raises(ConfigError, match=r"^tracking\.appearance_gate: must be in \[0, 1\]"):
        tracking_config({"appearance_gate": 70})
    with pytest.raises(ConfigError, match=r"^tracking\.partial_view_power: must be >= 0"):
        tracking_config({"partial_view_power": -0.5})
    with pytest.raises(ConfigError, match=r"^tracking\.full_view_half_life_s: must be positive"):
        tracking_config({"full_view_half_life_s": 0})
    with pytest.raises(ConfigError, match=r"^tracking\.max_hits: unknown key"):
        tracking_config({"max_hits": 3})
    with pytest.raises(ValueError, match="pts"):
        tracker = StreamTracker()
        step(tracker, [], 1.0)
        step(tracker, [], 0.5)


def test_a_lone_track_whose_mask_changed_shape_keeps_its_id():
    """A walker seen again after a gap with a mask of another shape (its legs swung): with no
    rival detection near it, its box decides and it keeps its id; the mask would have broken it."""
    def frame_mask(box, right_half):
        m = np.zeros((H, W), np.uint8)
        x1, y1, x2, y2 = (int(v) for v in box)
        middle = (x1 + x2) // 2
        m[y1:y2, middle:x2] = 1
        if not right_half:
            m[y1:y2, x1:x2] = 1 - m[y1:y2, x1:x2]
        r = mask_utils.encode(np.asfortranarray(m))
        return {"size": [H, W], "counts": r["counts"].decode("ascii")}
    a = walker(50, 3.0)
    tracker = StreamTracker(TrackingConfig(method="bytetrack-mask"))
    ids = []
    for f in list(range(6)) + [9, 12]:
        box = np.array([a(f)])
        ids += tracker.update(box, [0.9], [PERSON], [frame_mask(box[0], f >= 9)], f / FPS).track_ids.tolist()
    assert ids == [1] * 8


def car_passing_behind_another(occlusion: bool) -> list[list[int]]:
    """A car (40 px wide, 8 px a frame to the right) passes behind a parked one (80 px wide):
    what shows of it (its box cut at the parked car's edges, gone while wholly behind) is
    detected. Returns the passing car's ids per frame ([] while hidden)."""
    tracker = StreamTracker(TrackingConfig(occlusion=occlusion))
    parked = (150, 30, 230, 90)
    ids = []
    for f in range(30):
        x1, x2 = 40 + 8 * f, 80 + 8 * f
        shown = [(x1, 40, min(x2, 150), 80)] if x1 < 150 else []
        shown += [(max(x1, 230), 40, x2, 80)] if x2 > 230 else []
        ids.append(step(tracker, [(parked, CAR, 0.95)] + [(box, CAR, 0.9) for box in shown], f / FPS).track_ids[1:].tolist())
    return ids


def test_a_car_passing_behind_another_keeps_its_id():
    """While it slides behind, its box shrinks: taken at face value the track would shrink and
    slow down, and lose the car when it comes out on the other side. Occlusion-aware, a
    detection inside the track's expected box whose missing part the parked car covers leaves
    the track coasting on its motion, so the car comes out where the track expects it."""
    aware = car_passing_behind_another(occlusion=True)
    assert [] in aware and aware[-1] == [2]
    assert {i for frame in aware for i in frame} - {0} == {2}
    naive = car_passing_behind_another(occlusion=False)
    assert {i for frame in naive for i in frame} - {0} == {2, 3}


RED, BLUE = (200.0, 30.0, 30.0), (30.0, 40.0, 190.0)


def back_after_a_gap(colour_back, shift: float, colours: bool = True) -> list[int]:
    """A red car (40 px) drives 4 px a frame to the right for 10 frames, is missed for 8 frames,
    and is detected again `shift` px from where it was last seen, its colour then `colour_back`
    (its box then overlaps neither its last box nor its predicted one). The detection's ids."""
    tracker = StreamTracker(TrackingConfig())
    ids = []
    for f in range(30):
        if 10 <= f < 18:
            objects, paint = [], []
        else:
            x = 100 + 4 * f if f < 10 else 136 + shift
            objects, paint = [((x, 40, x + 40, 80), CAR)], [RED if f < 10 else colour_back]
        boxes = np.array([o[0] for o in objects], np.float64).reshape(-1, 4)
        step = tracker.update(boxes, np.full(len(objects), 0.9), np.full(len(objects), CAR),
                              [rect_rle(b) for b in boxes], f / FPS, colours=np.array(paint) if colours else None)
        ids += step.track_ids.tolist()
    return ids


def test_an_object_back_where_its_box_overlaps_nothing_is_known_by_its_colour():
    """Back 60 px (1.5 of its size) behind where it was last seen and 96 px from where its motion
    said: no box stage matches it. By where and what (near, and the same colour) it keeps its id;
    without colours, or in another colour, or 4 sizes away, it is a new object."""
    assert back_after_a_gap(RED, -60) == [1] * 22
    assert back_after_a_gap(RED, -60, colours=False) == [1] * 10 + [0] + [2] * 11
    assert back_after_a_gap(BLUE, -60) == [1] * 10 + [0] + [2] * 11
    assert back_after_a_gap(RED, -160) == [1] * 10 + [0] + [2] * 11
    # the pipeline's stage hands the workers' colours to the tracker
    stage = TrackingStage(TrackingConfig(), publish_score=0.5)
    published = []
    for f in list(range(10)) + list(range(18, 24)):
        x = 100 + 4 * f if f < 10 else 76
        box = (float(x), 40.0, x + 40.0, 80.0)
        record = record_of([(box, 0.9)], f / FPS, seq=f)
        record = replace(record, instances=tuple(replace(i, class_id=CAR, label="car", colour=RED)
                                                 for i in record.instances))
        published += [i.track_id for i in stage.apply(record).instances]
    assert published == [1] * 16


def test_mask_colours_are_the_mean_colour_of_each_masks_pixels():
    """Exact up to `samples` pixels; larger masks are sampled evenly along their runs and stay
    within a few levels of the full mean on a real frame (the tracker's colour gate is 30); an
    empty mask gives 0. A mistake in where the samples are read (rows for columns, a run's start
    off by one run) is tens of levels off on this frame."""
    import cv2

    from tests.pipeline_helpers import HIGHWAY
    capture = cv2.VideoCapture(str(HIGHWAY))
    ok, bgr = capture.read()
    capture.release()
    assert ok
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    height, width = rgb.shape[:2]
    masks = []
    for k, (cx, cy, rx, ry) in enumerate([(100, 100, 3, 4), (640, 400, 300, 150), (1270, 710, 40, 40),
                                          (300, 600, 120, 20), (900, 200, 8, 60)]):
        mask = np.zeros((height, width), np.uint8)
        cv2.ellipse(mask, (cx, cy), (rx, ry), 15 * k, 0, 360, 1, -1)
        masks.append(mask)
    masks.append(np.zeros((height, width), np.uint8))
    rles = [mask_utils.encode(np.asfortranarray(m)) for m in masks]
    got, palettes = mask_colours(rgb, rles)
    want = [rgb[m.astype(bool)].mean(axis=0) if m.any() else np.zeros(3) for m in masks]
    assert got.shape == (len(masks), 3)
    np.testing.assert_array_equal(got[0], want[0])                # 45 pixels: every one read
    np.testing.assert_allclose(got, want, atol=8.0)
    assert np.abs(got - want).mean() < 2.0
    assert np.abs(got[1] - want[1]).max() > 0                     # 141,000 pixels: sampled
    # palettes: each mask's share of pixels per colour cell, from the same samples
    full = [np.bincount(palette_cell(rgb[m.astype(bool)]), minlength=PALETTE_BINS) / max(m.sum(), 1) for m in masks]
    assert palettes.shape == (len(masks), PALETTE_BINS)
    np.testing.assert_array_equal(palettes[0], full[0])
    assert np.abs(palettes - full).sum(axis=1).max() < 0.25      # sampled: within a few % of the full share
    np.testing.assert_allclose(palettes[:-1].sum(axis=1), 1.0)
    assert (palettes[-1] == 0).all()                              # the empty mask
    assert palette_cell(np.array([255, 0, 130], np.uint8)) == (3 * 4 + 0) * 4 + 2
    assert [a.shape for a in mask_colours(rgb, [])] == [(0, 3), (0, PALETTE_BINS)]


def record_of(boxes_scores, pts, seq=0):
    """A FrameRecord of person instances with rectangle masks (boxes in the test frame)."""
    from pipeline.protocol import FrameRecord, InstanceRecord
    instances = tuple(InstanceRecord(PERSON, "person", score, tuple(float(v) for v in box), rect_rle(box))
                      for box, score in boxes_scores)
    return FrameRecord("cam", seq, seq, pts, 0.0, None, W, H, 0, {"inference": 1.0}, instances)


def test_tracking_stage_publishes_weak_instances_only_when_they_continue_a_track():
    stage = TrackingStage(TrackingConfig(low_score=0.1), publish_score=0.5)
    a, b = walker(50, 4.0), walker(250, -4.0)
    first = stage.apply(record_of([(a(0), 0.9), (b(0), 0.3)], 0.0))
    # the stream's first frame: its confident detection gets an id at once, the weak one is not published
    assert [(i.track_id, i.score) for i in first.instances] == [(1, 0.9)] and first.tracks_ended == ()
    assert "track" in first.timing_ms and first.timing_ms["inference"] == 1.0
    later = stage.apply(record_of([(a(1), 0.35), ((300, 10, 320, 30), 0.6)], 1 / FPS, seq=1))
    # a weak detection continuing track 1 is published; a new confident one is, in no track yet (0)
    assert [(i.track_id, i.score) for i in later.instances] == [(1, 0.35), (0, 0.6)]
    ended = [stage.apply(record_of([], f / FPS, seq=f)).tracks_ended for f in range(2, 40)]
    assert [e for e in ended if e] == [(1,)]          # unseen for more than max_age_s: ended once
    assert stage.alive() == ()


def test_every_instance_published_is_tracked_whatever_the_publish_threshold():
    """low_score (0.5 by default) comes down to a lower publish threshold: an instance published
    at 0.4 continues its track; at the default threshold, the same weak detection is neither
    tracked nor published, and the confident object's track coasts over it."""
    a = walker(50, 4.0)
    frames = [[(a(0), 0.9)], [(a(1), 0.9)], [(a(2), 0.4)], [(a(3), 0.9)]]
    low = TrackingStage(TrackingConfig(), publish_score=0.3)
    assert [[(i.track_id, i.score) for i in low.apply(record_of(f, n / FPS, seq=n)).instances]
            for n, f in enumerate(frames)] == [[(1, 0.9)], [(1, 0.9)], [(1, 0.4)], [(1, 0.9)]]
    default = TrackingStage(TrackingConfig(), publish_score=0.5)
    assert [[(i.track_id, i.score) for i in default.apply(record_of(f, n / FPS, seq=n)).instances]
            for n, f in enumerate(frames)] == [[(1, 0.9)], [(1, 0.9)], [], [(1, 0.9)]]


def test_tracking_stage_starts_over_when_pts_runs_backwards_and_ids_stay_unique():
    """A live source reopened with its clock at 0 again: the tracks end, new ids follow."""
    stage = TrackingStage(TrackingConfig(min_hits=1), publish_score=0.5)
    a = walker(50, 4.0)
    ids = [stage.apply(record_of([(a(f), 0.9)], 10 + f / FPS, seq=f)).instances[0].track_id for f in range(3)]
    again = stage.apply(record_of([(a(3), 0.9)], 0.0, seq=3))
    assert ids == [1, 1, 1] and again.tracks_ended == (1,) and again.instances[0].track_id == 2
    assert stage.alive() == (2,)


def width_after_a_cut(hider_mask) -> float:
    """A parked car's track, 80 px wide, after a frame where only its left 30 px are detected and
    another object's box (whose mask is hider_mask) covers the rest: the track's width."""
    tracker = StreamTracker(TrackingConfig())
    car, hider = (100, 40, 180, 80), (130, 30, 200, 90)
    for f in range(5):
        tracker.update(np.array([car], float), [0.9], [CAR], [rect_rle(car)], f / FPS)
    tracker.update(np.array([(100, 40, 130, 80), hider], float), [0.9, 0.9], [CAR, 3],
                   [rect_rle((100, 40, 130, 80)), hider_mask(hider)], 5 / FPS)
    (index,) = np.flatnonzero(tracker.class_ids == CAR)
    return float(tracker.mean[index, 2])


def thin_line_rle(box) -> dict:
    """A painted line: a 2 px diagonal across box, its mask filling a few percent of the box."""
    mask = np.zeros((H, W), np.uint8)
    x1, y1, x2, y2 = box
    for x in range(x1, x2):
        y = y1 + (x - x1) * (y2 - y1) // (x2 - x1)
        mask[y:y + 2, x] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def test_only_solid_shapes_hide_a_track_a_painted_lines_long_box_does_not():
    """Occlusion: a detection cut short where a solid object stands leaves its track coasting at
    its size; cut short where only a thin line's box lies, the detection is taken as it is."""
    assert width_after_a_cut(rect_rle) == pytest.approx(80, abs=1)
    assert width_after_a_cut(thin_line_rle) < 60


def test_a_stage_taken_up_from_a_snapshot_gives_the_ids_the_original_gives():
    """What a restarted publisher does: the tracker as it was before seq 6, frames 6.. again."""
    gone, b, c, late = walker(300, 6.0), walker(200, -5.0), walker(30, 3.0), walker(120, 2.0)
    records = [record_of([(w(f), 0.9) for w in [b, c] + [gone] * (f < 4) + [late] * (f >= 9)], f / FPS, seq=f)
               for f in range(14)]
    stage = TrackingStage(TrackingConfig(), publish_score=0.5)
    first = [stage.apply(r) for r in records[:6]]
    saved = stage.snapshot()
    rest = [stage.apply(r) for r in records[6:]]
    taken_up = TrackingStage(TrackingConfig(), publish_score=0.5, tracker=saved)
    def ids(published):    # (their timing differs)
        return [(r.instances, r.tracks_ended) for r in published]
    assert ids(taken_up.apply(r) for r in records[6:]) == ids(rest) and taken_up.alive() == stage.alive()
    fresh = TrackingStage(TrackingConfig(), publish_score=0.5)
    assert ids(fresh.apply(r) for r in records[6:]) != ids(rest)
    assert {i.track_id for r in first + rest for i in r.instances} == {0, 1, 2, 3, 4}   # 0: late's first frame


def palette(*parts) -> np.ndarray:
    """A palette made of (RGB, share) parts."""
    out = np.zeros(PALETTE_BINS)
    for rgb, share in parts:
        out[palette_cell(np.array(rgb, np.uint8))] += share
    return out


WHITE = (240.0, 240.0, 240.0)


def test_palette_share_counts_a_part_of_the_tracks_colours_in_full_and_other_colours_not():
    track = palette((RED, 0.5), (WHITE, 0.5))
    shares = palette_share(track[None], np.stack([palette((RED, 1.0)), palette((RED, 0.5), (WHITE, 0.5)),
                                                  palette((BLUE, 1.0)), palette((RED, 0.3), (BLUE, 0.7))]))
    np.testing.assert_allclose(shares, [[1.0, 1.0, 0.0, 0.3]])
    # up to twice the track's share per cell: a part of a third of the track's colours counts 2/3
    assert palette_share(palette((RED, 1 / 3), (WHITE, 2 / 3))[None], palette((RED, 1.0))[None])[0, 0] == \
        pytest.approx(2 / 3)


def car_then_another(colour_after, palettes: bool = True, stage: bool = False) -> list[int]:
    """A red car (40 px) drives 2 px a frame for 10 frames; from frame 10 a car painted
    `colour_after` is where it would be (its box moved on 2 px a frame): the ids of each frame's
    detection, from the tracker alone or through the pipeline's TrackingStage (palettes from the
    workers' instance records)."""
    tracker, tracking = StreamTracker(TrackingConfig()), TrackingStage(TrackingConfig(), publish_score=0.5)
    ids = []
    for f in range(16):
        x = 100 + 2 * f
        box, paint = (x, 40.0, x + 40.0, 80.0), palette((RED if f < 10 else colour_after, 1.0))
        if stage:
            record = record_of([(box, 0.9)], f / FPS, seq=f)
            record = replace(record, instances=tuple(replace(i, class_id=CAR, label="car", palette=paint)
                                                     for i in record.instances))
            ids += [i.track_id for i in tracking.apply(record).instances]
        else:
            ids += tracker.update(np.array([box]), np.array([0.9]), np.array([CAR]), [rect_rle(box)], f / FPS,
                                  palettes=paint[None] if palettes else None).track_ids.tolist()
    return ids


def test_a_car_of_another_colour_where_one_was_does_not_take_its_id():
    """Boxes alone cannot tell one car from another that takes its place (one leaves the frame as
    another comes in, or passes in front of it): the palettes can. A car of the same colour, or
    a run without palettes, keeps the id; through the pipeline's stage the same."""
    assert car_then_another(BLUE) == [1] * 10 + [0] + [2] * 5
    assert car_then_another(BLUE, stage=True) == [1] * 10 + [0] + [2] * 5
    assert car_then_another(RED) == [1] * 16
    assert car_then_another(BLUE, palettes=False) == [1] * 16


def test_the_part_of_a_car_left_visible_keeps_its_id_though_its_palette_is_a_part_of_the_tracks():
    """A car half red, half white whose lower half goes behind something: what shows is all red
    (a share of 1 in one cell, against the track's 0.5); it keeps its id (counted up to twice the
    track's share). A detection of the same box all blue does not."""
    def run(shown) -> list[int]:
        tracker = StreamTracker(TrackingConfig())
        ids = []
        for f in range(16):
            x = 100 + 2 * f
            full, top = (x, 40.0, x + 40.0, 80.0), (x, 40.0, x + 40.0, 60.0)
            box, paint = (full, palette((RED, 0.5), (WHITE, 0.5))) if f < 10 else (top, palette((shown, 1.0)))
            ids += tracker.update(np.array([box]), np.array([0.9]), np.array([CAR]), [rect_rle(box)], f / FPS,
                                  palettes=paint[None]).track_ids.tolist()
        return ids
    assert run(RED) == [1] * 16
    assert run(BLUE) == [1] * 10 + [0] + [2] * 5


def half_hidden_back_after_a_gap(shown, palettes: bool) -> list[int]:
    """A car half red, half white drives 4 px a frame for 10 frames, is missed for 8 frames, and
    is detected again 60 px behind where it was last seen (no box stage matches it) with its lower
    half hidden, showing `shown` alone. The detection's ids, given palettes or mean colours."""
    tracker = StreamTracker(TrackingConfig())
    two_tone = palette((RED, 0.5), (WHITE, 0.5))
    ids = []
    for f in list(range(10)) + list(range(18, 30)):
        x = 100 + 4 * f if f < 10 else 76
        box = (x, 40.0, x + 40.0, 80.0) if f < 10 else (x, 40.0, x + 40.0, 60.0)
        paint = two_tone if f < 10 else palette((shown, 1.0))
        mean = (np.array(RED) + np.array(WHITE)) / 2 if f < 10 else np.array(shown)
        ids += tracker.update(np.array([box]), np.array([0.9]), np.array([CAR]), [rect_rle(box)], f / FPS,
                              colours=mean[None], palettes=paint[None] if palettes else None).track_ids.tolist()
    return ids


def test_re_identification_by_palette_knows_the_part_of_an_object_its_mean_colour_does_not():
    """What shows of the car after the gap is its red half: its mean colour is far from the
    track's (red and white), its palette is a part of the track's. With palettes it keeps its
    id (and a blue car there does not take it); by mean colour alone it is a new object."""
    assert half_hidden_back_after_a_gap(RED, palettes=True) == [1] * 22
    assert half_hidden_back_after_a_gap(BLUE, palettes=True) == [1] * 10 + [0] + [2] * 11
    assert half_hidden_back_after_a_gap(RED, palettes=False) == [1] * 10 + [0] + [2] * 11


def whole_sliver_whole(config: TrackingConfig) -> list[int]:
    """A car half red, half white, seen whole for 10 frames; then for 8 frames only a strip of its
    top shows (a quarter of its box, all red: the rest hidden by what no detection covers); then it is
    whole again. The detection's ids."""
    tracker = StreamTracker(config)
    two_tone, red = palette((RED, 0.5), (WHITE, 0.5)), palette((RED, 1.0))
    ids = []
    for f in range(24):
        x = 100 + 2 * f
        sliver = 10 <= f < 18
        box, paint = ((x, 40.0, x + 40.0, 50.0), red) if sliver else ((x, 40.0, x + 40.0, 80.0), two_tone)
        ids += tracker.update(np.array([box]), np.array([0.9]), np.array([CAR]), [rect_rle(box)], f / FPS,
                              palettes=paint[None]).track_ids.tolist()
    return ids


def test_a_sliver_of_a_car_does_not_teach_its_track_that_the_car_is_all_that_colour():
    """The strip, a quarter of the car's box, weighs 0.25 ** partial_view_power of a whole view in
    the track's palette, so the whole car back still shows the track's colours and keeps its id. With
    every view weighing the same (power 0), eight red strips leave the track's palette nearly all
    red, the appearance gate turns the whole car away, and it becomes a new track."""
    assert whole_sliver_whole(TrackingConfig()) == [1] * 24
    assert whole_sliver_whole(TrackingConfig(partial_view_power=0.0)) == [1] * 18 + [0] + [2] * 5


def test_colour_weights_by_the_share_of_the_largest_view_which_fades_with_its_half_life():
    """A whole view weighs the smoothing; a quarter of it 0.25 ** power of that; a view larger
    than any before is the new full area; the full area halves every half-life."""
    weights, full = colour_weights(np.array([100.0, 25.0, 400.0, 50.0]), np.array([100.0, 100.0, 100.0, 100.0]),
                                   np.array([0.0, 0.0, 0.0, 1.4]), 0.3, 0.75, 1.4)
    np.testing.assert_allclose(weights, [0.3, 0.3 * 0.25 ** 0.75, 0.3, 0.3])
    np.testing.assert_allclose(full, [100.0, 100.0, 400.0, 50.0])

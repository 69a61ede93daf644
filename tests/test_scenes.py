"""Generated street scenes: determinism, exact masks, occlusion, classes, motion, sizes, writer."""
import json

import numpy as np
import pytest

from models.data import scenes
from models.data.scenes import CLASS_NAMES, MIN_VISIBLE_PIXELS, Canvas, StreetScene

W, H = 320, 180


def sequence(seed: int, frames: int, start: int = 0):
    scene = StreetScene(seed, W, H)
    return [scene.frame(t) for t in range(start, start + frames)]


def tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def test_same_seed_same_video_in_any_order_and_other_seed_differs():
    a, b = StreetScene(11, W, H), StreetScene(11, W, H)
    later = b.frame(37)                                       # b renders out of order
    for t in (0, 36, 37):
        rgb_a, inst_a = a.frame(t)
        rgb_b, inst_b = later if t == 37 else b.frame(t)
        assert rgb_a.shape == (H, W, 3) and rgb_a.dtype == np.uint8
        np.testing.assert_array_equal(rgb_a, rgb_b)
        assert [(i.class_id, i.track_id, i.box) for i in inst_a] == [(i.class_id, i.track_id, i.box) for i in inst_b]
        assert all(np.array_equal(i.mask, j.mask) for i, j in zip(inst_a, inst_b))
    assert not np.array_equal(StreetScene(12, W, H).frame(0)[0], a.frame(0)[0])


def test_masks_are_non_empty_disjoint_and_boxes_are_their_tight_boxes():
    checked = 0
    for seed in (1, 2, 3):
        for rgb, instances in sequence(seed, 8, start=50):
            coverage = np.zeros((H, W), np.int32)
            for inst in instances:
                assert inst.mask.shape == (H, W) and inst.mask.dtype == bool
                assert inst.mask.sum() >= MIN_VISIBLE_PIXELS
                assert inst.box == tight_box(inst.mask)
                assert inst.label == CLASS_NAMES[inst.class_id]
                coverage += inst.mask
                checked += 1
            assert coverage.max() <= 1
    assert checked > 100


def test_later_drawing_hides_earlier_and_slivers_are_dropped():
    canvas = Canvas(np.zeros((40, 60, 3), np.uint8))
    back, front, hidden = canvas.begin(1, 10), canvas.begin(2, 20), canvas.begin(3, 30)
    # a polygon covers the pixels whose centres (integer coordinates) it contains, edges included
    canvas.fill(np.array([[10, 10], [40, 10], [40, 29], [10, 29]], float), (200, 0, 0), back)
    canvas.fill(np.array([[5, 0], [12, 0], [12, 3], [5, 3]], float), (0, 0, 200), hidden)
    canvas.fill(np.array([[30, 5], [55, 5], [55, 35], [30, 35]], float), (0, 200, 0), front)
    canvas.fill(np.array([[5, 0], [50, 0], [50, 2.5], [5, 2.5]], float), (0, 200, 0), front)
    found = {inst.track_id: inst for inst in canvas.instances()}
    assert set(found) == {10, 20}                  # 30 shows one row of 8 pixels: under 16
    assert found[10].box == (10.0, 10.0, 30.0, 30.0)   # its right part is behind 20
    assert found[10].mask.sum() == 20 * 20
    assert not (found[10].mask & found[20].mask).any()
    np.testing.assert_array_equal(canvas.rgb[found[10].mask], [[200, 0, 0]] * 400)


def test_all_three_classes_appear_within_a_short_sequence():
    for seed in (4, 5, 6):
        seen = {inst.label for _, instances in sequence(seed, 12, start=100) for inst in instances}
        assert seen == {"car", "person", "lane"}, seed


def test_motion_is_coherent_between_consecutive_frames():
    """A track's box centre moves by a fraction of its size per frame (occlusion and the frame
    edge can shift the visible part a little more); things do move; shuffled tracks would not pass."""
    ratios, moved = [], 0
    for seed in (0, 1, 2):
        frames = sequence(seed, 40, start=30)
        for (_, before), (_, after) in zip(frames, frames[1:]):
            previous = {inst.track_id: np.array(inst.box) for inst in before}
            for inst in after:
                if inst.track_id not in previous:
                    continue
                a, b = previous[inst.track_id], np.array(inst.box)
                size = max(a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1])
                shift = np.abs((a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2).max()
                assert shift <= 0.5 * size + 4, (seed, inst.label, a, b)
                ratios.append(shift / size)
                moved += shift > 0
    assert len(ratios) > 300
    assert np.percentile(ratios, 90) < 0.15
    assert moved > len(ratios) / 4


def test_sizes_span_more_than_ten_times_and_lower_means_bigger():
    areas, people = [], []
    for seed in (7, 8):
        for _, instances in sequence(seed, 30, start=200):
            areas += [int(inst.mask.sum()) for inst in instances]
            people += [(inst.box[3], inst.box[3] - inst.box[1]) for inst in instances
                       if inst.label == "person" and 0 < inst.box[1] and inst.box[3] < H]
    assert max(areas) > 10 * min(areas)
    bottoms, heights = np.array(people).T
    assert len(people) > 20
    assert np.corrcoef(bottoms, heights)[0, 1] > 0.7    # perspective: lower in the frame, taller


def test_a_frame_index_must_not_be_negative_nor_the_frame_tiny():
    with pytest.raises(ValueError, match="t=-1"):
        StreetScene(0, W, H).frame(-1)
    with pytest.raises(ValueError, match="too small"):
        StreetScene(0, 16, 16)


def test_writer_is_reproducible_and_writes_coco(tmp_path):
    for name in ("a", "b"):
        assert scenes.main(["write", str(tmp_path / name), "--images", "3", "--seed", "5", "--width", "160",
                            "--height", "96", "--frames-per-sequence", "2", "--frame-step", "3"]) == 0
    data = json.loads((tmp_path / "a" / "annotations.json").read_text())
    assert (tmp_path / "a" / "annotations.json").read_bytes() == (tmp_path / "b" / "annotations.json").read_bytes()
    for image in data["images"]:
        assert (tmp_path / "a" / "images" / image["file_name"]).read_bytes() == \
               (tmp_path / "b" / "images" / image["file_name"]).read_bytes()
    assert [c["id"] for c in data["categories"]] == [1, 2, 3]
    assert [c["name"] for c in data["categories"]] == CLASS_NAMES[1:]
    first, second, third = data["images"]
    assert first["scene_seed"] == second["scene_seed"] != third["scene_seed"]
    assert second["frame_index"] - first["frame_index"] == 3
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"]) > 0
    assert all(a["iscrowd"] == 0 and a["area"] >= MIN_VISIBLE_PIXELS for a in data["annotations"])


def test_writer_rejects_a_bad_count(tmp_path, capsys):
    assert scenes.main(["write", str(tmp_path), "--images", "0", "--seed", "1"]) == 2
    assert capsys.readouterr().err.count("\n") == 1

"""RoIAlign against an independent plain-numpy implementation of torchvision's semantics."""
import numpy as np
import pytest
import tensorflow as tf

from models.roi_align import assign_levels, crop_level, multilevel_roi_align, pad_edges


def bilinear(feature, y, x):
    """feature (H, W, C) sampled at (y, x) with torchvision's border rules."""
    h, w, _ = feature.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(feature.shape[2], np.float64)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * feature[y0, x0] + (1 - ly) * lx * feature[y0, x1]
            + ly * (1 - lx) * feature[y1, x0] + ly * lx * feature[y1, x1])


def reference_roi_align(feature, box, scale, out, ratio, aligned):
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = [v * scale - offset for v in box]
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = max(rw, 1.0), max(rh, 1.0)
    bw, bh = rw / out, rh / out
    result = np.zeros((out, out, feature.shape[2]))
    for py in range(out):
        for px in range(out):
            acc = 0.0
            for iy in range(ratio):
                for ix in range(ratio):
                    y = y1 + py * bh + (iy + 0.5) * bh / ratio
                    x = x1 + px * bw + (ix + 0.5) * bw / ratio
                    acc = acc + bilinear(feature, y, x)
            result[py, px] = acc / (ratio * ratio)
    return result


def random_boxes(rng, n, width, height):
    x1 = rng.uniform(-10, width, n)
    y1 = rng.uniform(-10, height, n)
    w = rng.exponential(width / 4, n)
    h = rng.exponential(height / 4, n)
    return np.stack([x1, y1, x1 + w, y1 + h], 1).astype(np.float32)


@pytest.mark.parametrize("aligned", [False, True])
def test_single_level_matches_reference_including_borders_and_tiny_boxes(aligned):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((2, 9, 13, 3)).astype(np.float32)
    scale = 0.25                              # a 36 x 52 image
    boxes = np.concatenate([
        random_boxes(rng, 20, 52, 36),
        [[0, 0, 52, 36],                      # the whole image, up to the last cell's far edge
         [50.5, 34.2, 52, 36],                # in the bottom-right corner
         [-6, -6, 3, 3],                      # sticking out top-left (samples in the zero zone)
         [10, 10, 10.5, 10.3],                # smaller than one cell
         [60, 40, 70, 50]],                   # entirely outside
    ]).astype(np.float32)
    indices = rng.integers(0, 2, len(boxes)).astype(np.int32)
    (padded,) = pad_edges([tf.constant(features)])
    got = crop_level(padded, tf.constant(boxes), tf.constant(indices), scale, 7, 2, aligned).numpy()
    for i, (box, b) in enumerate(zip(boxes, indices)):
        want = reference_roi_align(features[b].astype(np.float64), box, scale, 7, 2, aligned)
        np.testing.assert_allclose(got[i], want, atol=2e-5, err_msg=f"box {i} {box}")


def test_level_assignment_follows_the_fpn_rule():
    sides = np.array([10, 111, 112, 223, 224, 447, 448, 895, 896, 2000], np.float32)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], 1)
    levels = assign_levels(tf.constant(boxes), 224.0, 4, 2, 5).numpy()
    np.testing.assert_array_equal(levels, [2, 2, 3, 3, 4, 4, 5, 5, 5, 5])


def test_multilevel_pools_each_roi_on_its_level_for_every_frame_at_once():
    rng = np.random.default_rng(1)
    image_hw = (64, 96)
    features = [rng.standard_normal((3, 64 // s, 96 // s, 4)).astype(np.float32) for s in (4, 8, 16, 32)]
    boxes = np.concatenate([random_boxes(rng, 30, 96, 64), [[0, 0, 96, 64], [5, 5, 6, 6]]]).astype(np.float32)
    indices = rng.integers(0, 3, len(boxes)).astype(np.int32)
    got = multilevel_roi_align(pad_edges([tf.constant(f) for f in features]), tf.constant(boxes), tf.constant(indices),
                               image_hw, 7, 2, False, 16.0, 4).numpy()
    levels = assign_levels(tf.constant(boxes), 16.0, 4, 2, 5).numpy()   # a small canonical size: all levels used
    assert set(levels.tolist()) == {2, 3, 4, 5}
    for i, (box, b, level) in enumerate(zip(boxes, indices, levels)):
        feature = features[level - 2][b].astype(np.float64)
        want = reference_roi_align(feature, box, 1.0 / 2 ** level, 7, 2, False)
        np.testing.assert_allclose(got[i], want, atol=2e-5, err_msg=f"box {i} level {level}")

"""The model API: batching is exact, graphs are reused, bad frames are refused, RLE equals the
pasted masks, and weight files that do not fit fail in one line."""
import re

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

import models
from models import postprocess
from models.anchors import base_anchors, level_anchors
from models.mask_rcnn import param_shapes
from models.tools.convert import ConversionError, convert_state_dict

TINY = "configs/test_tiny.yaml"


def still(i, width, height):
    image = cv2.imread(f"../shared/data/highway_{i}.jpg")
    return cv2.cvtColor(cv2.resize(image, (width, height)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def model():
    return models.load_model(TINY, seed=3)


def assert_same_detections(a, b):
    assert len(a) == len(b) > 0
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    np.testing.assert_allclose(a.mask_probs, b.mask_probs, atol=1e-4)


@pytest.mark.slow
def test_a_batch_of_different_sizes_equals_separate_calls(model):
    frames = [still(1, 320, 180), still(2, 200, 150), still(3, 320, 180), still(4, 97, 61)]
    together = model.predict(frames, masks="full")
    for frame, batched in zip(frames, together):
        alone = model.predict([frame], masks="full")[0]
        assert_same_detections(batched, alone)
        assert batched.masks.shape == (len(batched),) + frame.shape[:2]
        agree = (batched.masks == alone.masks).mean()
        assert agree > 0.999


@pytest.mark.slow
def test_one_graph_per_frame_size_reused_for_every_batch_size(model):
    frames = np.stack([still(1, 256, 144), still(2, 256, 144), still(3, 256, 144)])
    model.predict(frames[:1], masks="none")
    graph = model.graph_for(144, 256)
    assert graph.experimental_get_tracing_count() == 1
    out = model.predict(frames, masks="none")
    model.predict(frames[1:], masks="none")
    assert graph.experimental_get_tracing_count() == 1
    assert len(out) == 3 and all(len(d) == 10 for d in out)


def test_rle_equals_pasted_masks(model):
    frame = still(5, 300, 170)
    full = model.predict([frame], masks="full")[0]
    rle = model.predict([frame], masks="rle")[0]
    decoded = mask_utils.decode(rle.rles).transpose(2, 0, 1).astype(bool)
    np.testing.assert_array_equal(decoded, full.masks)
    assert all(r["size"] == [170, 300] and isinstance(r["counts"], str) for r in rle.rles)


@pytest.mark.parametrize("shape", [(40, 60), (40, 60, 1), (40, 60, 4)])
def test_grayscale_and_rgba_frames_are_converted(model, shape):
    frame = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    (det,) = model.predict([frame], masks="none")
    assert det.boxes.shape == (10, 4)
    assert det.boxes[:, 2].max() <= 60 and det.boxes[:, 3].max() <= 40


@pytest.mark.parametrize("bad, problem", [
    (np.zeros((0, 50, 3), np.uint8), "empty"),
    (np.zeros((50, 50, 3), np.float32), "dtype float32"),
    (np.zeros((2, 50, 50, 3, 1), np.uint8), "rank 5"),
    (np.zeros((50, 50, 2), np.uint8), "2 channels"),
    (np.zeros((20, 50, 3), np.uint8), "smaller than 32"),
])
def test_bad_frames_are_refused_naming_the_frame(model, bad, problem):
    with pytest.raises(ValueError, match=rf"^frame 1: .*{problem}"):
        model.predict([still(1, 64, 64), bad])


def test_region_rle_matches_pycocotools_including_runs_across_columns():
    rng = np.random.default_rng(0)
    for trial in range(50):
        height, width = rng.integers(1, 30, 2)
        h, w = rng.integers(0, height + 1), rng.integers(0, width + 1)
        y0, x0 = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        region = rng.random((h, w)) < rng.choice([0.1, 0.5, 0.95])
        if trial % 5 == 0:                      # full-height regions: runs join across columns
            y0, h = 0, height
            region = rng.random((h, w)) < 0.97
        full = np.zeros((height, width), np.uint8)
        full[y0:y0 + h, x0:x0 + w] = region[:h, :w] if region.size else 0
        want = mask_utils.encode(np.asfortranarray(full))
        got = postprocess.region_to_rle(region[:h, :w] if region.size else np.zeros((h, w), bool), y0, x0,
                                        (int(height), int(width)))
        assert got["counts"] == want["counts"].decode(), trial


def test_anchors_follow_torchvision():
    np.testing.assert_array_equal(base_anchors(32, (0.5, 1.0, 2.0)),
                                  [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]])
    anchors = level_anchors((800, 1344), (13, 21), 512.0, (1.0,))
    # P6 of an 800-high image is 13 cells: torchvision's stride is 800 // 13 = 61, not 64.
    np.testing.assert_array_equal(anchors[21], [-256, 61 - 256, 256, 61 + 256])


@pytest.mark.slow
def test_weights_round_trip_and_one_line_errors(tmp_path, model):
    path = model.save(tmp_path / "tiny.npz")
    again = models.load_model(TINY, weights=path)
    frame = still(2, 160, 96)
    assert_same_detections(model.predict([frame])[0], again.predict([frame])[0])

    with pytest.raises(models.WeightsError, match="no such weights file"):
        models.load_model(TINY, weights=tmp_path / "missing.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(models.WeightsError, match="corrupt.npz: not a maskstream weights file"):
        models.load_model(TINY, weights=tmp_path / "corrupt.npz")
    other = models.load_config(TINY)
    other.backbone.depth = 34
    models.save_weights(tmp_path / "r34.npz", models.mask_rcnn.initial_params(other))
    with pytest.raises(models.WeightsError, match=r"r34.npz \(no recorded configuration\) does not fit "
                                                  r"configs/test_tiny.yaml: (missing|unexpected) parameter backbone/layer"):
        models.load_model(TINY, weights=tmp_path / "r34.npz")


def test_weights_record_their_config_and_a_misfit_is_one_line_naming_both(tmp_path, model):
    from models.weights import read_weights
    path = model.save(tmp_path / "tiny.npz")
    _, meta = read_weights(path)
    assert meta["config"] == model.config.to_dict() and meta["config_file"] == TINY and meta["made_by"] == "saved"
    assert models.load_config(meta["config"]) == model.config       # the record rebuilds the same config
    # Old files (configs/default_model.npz records only name, classes and backbone) still load and are named.
    with pytest.raises(models.WeightsError) as error:
        models.load_model(TINY, weights="configs/default_model.npz")
    assert str(error.value) == ("configs/default_model.npz (made for default_r18_street: ResNet-18 width 32, "
                                "4 classes) does not fit configs/test_tiny.yaml: backbone/conv1/kernel is "
                                "(7, 7, 3, 32) there, (7, 7, 3, 16) here")
    five = models.load_config(TINY).to_dict()
    five["class_names"] = five["class_names"] + ["bike"]
    with pytest.raises(models.WeightsError) as error:
        models.load_model(five, weights=path)
    assert str(error.value) == (f"{path} (saved with test_tiny: ResNet-18 width 16, 4 classes) does not fit the "
                                "configuration test_tiny: box_head/cls_score/kernel is (64, 4) there, (64, 5) here")


def test_converter_names_the_first_missing_or_misshaped_key():
    config = models.load_config(TINY)
    with pytest.raises(ConversionError, match="missing key backbone.body.conv1.weight"):
        convert_state_dict({}, config, "sd.pth")
    state = {"backbone.body.conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}
    with pytest.raises(ConversionError, match=r"conv1.weight has shape \(64, 3, 7, 7\), the configuration needs \(16, 3, 7, 7\)"):
        convert_state_dict(state, config, "sd.pth")
    assert len(param_shapes(config)) > 50


@pytest.mark.slow
def test_bfloat16_precision_finds_the_same_top_detections():
    frame = still(2, 320, 180)
    config = models.load_config(TINY)
    full = models.load_model(config, seed=3).predict([frame])[0]
    config.precision = "bfloat16"
    half = models.load_model(config, seed=3).predict([frame])[0]
    assert abs(full.scores[0] - half.scores[0]) < 0.02
    assert not np.array_equal(full.scores, half.scores)   # bfloat16 really computed (not ignored)
    for box, cls in zip(full.boxes[:3], full.class_ids[:3]):
        same_class = half.boxes[half.class_ids == cls]
        x1 = np.maximum(box[0], same_class[:, 0]); y1 = np.maximum(box[1], same_class[:, 1])
        x2 = np.minimum(box[2], same_class[:, 2]); y2 = np.minimum(box[3], same_class[:, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        union = (box[2] - box[0]) * (box[3] - box[1]) + (same_class[:, 2] - same_class[:, 0]) * (same_class[:, 3] - same_class[:, 1]) - inter
        assert (inter / union).max() > 0.9


def test_exact_paste_fills_a_whole_box_and_follows_sub_pixel_boxes():
    ones = np.ones((28, 28), np.float32)
    full = postprocess.paste_masks(ones[None], np.array([[10, 20, 30, 40]], np.float32), (50, 60), mode="exact")[0]
    want = np.zeros((50, 60), bool)
    want[20:40, 10:30] = True
    np.testing.assert_array_equal(full, want)
    left_half = np.zeros((28, 28), np.float32)
    left_half[:, :14] = 1
    for x1 in (10.0, 10.4, 10.6, 11.0):     # the mask's edge moves with the box's fractional position
        pasted = postprocess.paste_masks(left_half[None], np.array([[x1, 0, x1 + 20, 28]], np.float32), (28, 60),
                                         mode="exact")[0]
        columns = np.flatnonzero(pasted[10])
        assert columns[0] == int(np.floor(x1 + 0.5)) and columns[-1] == int(np.ceil(x1 + 10 - 0.5)) - 1, x1
    clipped = postprocess.paste_masks(ones[None], np.array([[-5.5, -3, 8, 9]], np.float32), (6, 6), mode="exact")[0]
    assert clipped.all()


def test_exact_paste_gives_small_instances_back_where_torchvision_paste_moves_them():
    """Small dashes and boxes, sampled at 28 x 28 cell centres (as the training targets are) and
    pasted back: the exact paste returns the instance pixel for pixel; torchvision's paste, with
    its box truncated to whole pixels and grown by the padding, keeps about half of it."""
    for h, w, y, x in [(8, 3, 17, 11), (6, 2, 10, 10), (10, 4, 5, 7), (5, 5, 20, 20)]:
        truth = np.zeros((40, 40), bool)
        truth[y:y + h, x:x + w] = True
        box = np.array([x, y, x + w, y + h], np.float32)
        target = postprocess.sample_in_box(truth, box, 28)
        exact = postprocess.paste_masks(target[None], box[None], truth.shape, mode="exact")[0]
        np.testing.assert_array_equal(exact, truth)
        moved = postprocess.paste_masks(target[None], box[None], truth.shape, mode="torchvision")[0]
        assert (moved & truth).sum() / (moved | truth).sum() < 0.7


def assert_detections_of_classes(only, everything, class_ids, cap):
    """`only` (a model with box_head.classes and detections_per_image `cap`) is exactly the first `cap`
    detections of `class_ids` among `everything` (the same weights, every class, a cap that does not bind):
    classes, scores and boxes bit for bit, masks to the last bits of their probabilities."""
    wanted = np.flatnonzero(np.isin(everything.class_ids, class_ids))
    assert len(wanted) > cap and wanted[cap - 1] >= cap       # the cap binds: other classes rank among the first
    first = wanted[:cap]
    assert len(only) == cap
    np.testing.assert_array_equal(only.class_ids, everything.class_ids[first])
    assert only.labels == [everything.labels[i] for i in first]
    np.testing.assert_array_equal(only.scores, everything.scores[first])
    np.testing.assert_array_equal(only.boxes, everything.boxes[first])
    # the mask head runs on `cap` RoIs here and on every detection there: oneDNN's sums depend on
    # that batch's size on some CPUs (seen on AVX-512), so the masks agree to float32's last bits
    np.testing.assert_allclose(only.mask_probs, everything.mask_probs[first], rtol=0, atol=1e-6)
    for mine, theirs in zip(only.masks, everything.masks[first]):   # a pixel or two at the threshold, no more
        assert (mine != theirs).sum() <= 2 + 1e-3 * theirs.sum()


def test_classes_keeps_exactly_those_detections_and_fills_the_cap_with_them():
    """box_head.classes drops the other classes before NMS and the per-frame cap: what is left is the
    unfiltered model's detections of those classes (see assert_detections_of_classes), and the cap is filled with them
    (a filter after the cap would leave fewer; a wrong class-id mapping, other boxes or labels)."""
    frame = still(1, 320, 180)
    everything = models.load_model(models.load_config(TINY, ["box_head.detections_per_image=300"]), seed=3)
    only = models.load_model(models.load_config(TINY, ["box_head.classes=[lane, person]"]), seed=3)
    assert only.config.detected_class_ids == (2, 3)
    assert_detections_of_classes(only.predict([frame])[0], everything.predict([frame])[0], (2, 3), cap=10)


def test_classes_that_the_model_does_not_have_are_one_line_naming_them():
    from models.config import ConfigError
    with pytest.raises(ConfigError, match=r"box_head.classes: 'persn' is not a class of .*did you mean 'person'"):
        models.load_config(TINY, ["box_head.classes=[car, persn]"])
    with pytest.raises(ConfigError, match=r"box_head.classes: 'zebra' is not a class of .*its classes: car, person, lane\)"):
        models.load_config(TINY, ["box_head.classes=[zebra]"])
    with pytest.raises(ConfigError, match="box_head.classes: needs at least one class name"):
        models.load_config(TINY, ["box_head.classes=[]"])


def test_paste_mode_is_validated():
    from models.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="mask_head.paste"):
        load_config({"mask_head": {"paste": "nearest"}})


@pytest.mark.slow
def test_a_second_deconv_starts_as_nearest_upsampling_of_the_28x28_masks(model):
    """mask_head.deconvs 2 gives 56x56 masks; its new layer starts as a copy of each cell into a 2x2
    block, so weights trained with one deconv keep their masks (each cell repeated) when loaded."""
    config = models.load_config(TINY)
    config.mask_head.deconvs = 2
    assert config.mask_size == 56
    from models.mask_rcnn import initial_params
    params = initial_params(config, seed=0)
    trained = {name: value.numpy() for name, value in model.params.items()}
    fresh = sorted(set(params) - set(trained))
    assert fresh == ["mask_head/deconv2/bias", "mask_head/deconv2/kernel"]
    params.update(trained)
    larger = models.MaskRCNN(config, params)
    frame = still(2, 320, 180)
    base, big = model.predict([frame], masks="none")[0], larger.predict([frame], masks="none")[0]
    assert len(big) == len(base) > 0 and big.mask_probs.shape == (len(base), 56, 56)
    np.testing.assert_allclose(big.mask_probs, base.mask_probs.repeat(2, axis=1).repeat(2, axis=2), atol=1e-5)


def test_deconvs_is_validated():
    with pytest.raises(models.ConfigError, match=r"mask_head.deconvs: must be 1, 2 or 3"):
        models.load_config({"mask_head": {"deconvs": 0}})


def test_model_config_overrides_and_exponent_numbers(tmp_path):
    """`--set`-style overrides lay over a YAML; `1e-4` (a string to PyYAML) is read as a number."""
    config = models.load_config(TINY, ["input.min_size=96", "train.learning_rate=1e-4", "mask_head.deconvs=2"])
    assert (config.input.min_size, config.train.learning_rate, config.mask_size) == (96, 1e-4, 56)
    assert models.load_config(TINY).input.min_size != 96  # the file itself is untouched
    path = tmp_path / "exp.yaml"
    path.write_text(open(TINY).read() + "\ntrain:\n  weight_decay: 5e-5\n")
    assert models.load_config(str(path)).train.weight_decay == 5e-5
    for override, message in [("train.learning_rate=fast", "train.learning_rate: expected a number, got 'fast'"),
                              ("input.min_size", "--set input.min_size: expected key=value"),
                              ("input.min_size.x=1", "input.min_size is not a section"),
                              ("version=0", "version: is 0; this maskstream reads version 1 configurations")]:
        with pytest.raises(models.ConfigError, match=re.escape(message)):
            models.load_config(TINY, [override])

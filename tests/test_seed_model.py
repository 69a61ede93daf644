"""The seed's configuration (configs/seed_*.yaml) against the seed's own Keras graph, and what it adds.

tests/data/seed_reference_r50w8_512.{h5,npz} were written by bench/seed_reference.py: the seed's predict
graph built literally in tf-keras (a narrow ResNet-50 at 512, 81 classes), seeded weights conditioned so
that every frame keeps >= 30 detections over DETECTION_MIN_CONFIDENCE with distinct scores, saved by Keras's
own save_weights, and its detections on three 1280x720 frames of ../shared/data. Here the .h5 goes through
`convert_seed_h5` (what `maskstream convert keras` runs) into the seed configuration, and `predict` must give
the same detections one to one.
"""
import copy
from pathlib import Path

import numpy as np
import pytest

import models
from models.errors import ConfigError
from models.mask_rcnn import MaskRCNN
from models.preprocess import mold_square, resize_like_the_seed
from models.tools.parity import compare_reference, match_detections, read_reference_frames
from models.tools.seed_weights import convert_seed_h5, reference_settings

DATA = Path(__file__).resolve().parent / "data"
REFERENCE = DATA / "seed_reference_r50w8_512.npz"


@pytest.fixture(scope="module")
def reference():
    return np.load(REFERENCE)


@pytest.fixture(scope="module")
def frames(reference):
    return read_reference_frames(reference, Path("../shared/data"))


@pytest.fixture(scope="module")
def model(reference):
    config, params = convert_seed_h5(REFERENCE.with_suffix(".h5"))
    return MaskRCNN(reference_settings(config, reference), params)


@pytest.mark.slow
def test_same_detections_as_the_seeds_own_graph(model, reference, frames):
    names = [str(n) for n in reference["image_names"]]
    parities = compare_reference(model, reference, frames)
    ours = model.predict(frames, masks="none")
    # Boxes are matched when the same class and IoU >= 0.99, or one pixel off where the seed rounded from
    # within 0.05 px of a half pixel (its boxes before rounding are in the reference); masks of such boxes
    # must agree pasted into the seed's box: rare, and counted.
    matched = sum(len(p.pairs) for p in parities.values())
    assert sum(len(p.rounding_flips) + len(p.paste_flips()) for p in parities.values()) <= 0.02 * matched
    for name, detections in zip(names, ours):
        ref_scores = reference[f"{name}/scores"]
        assert len(ref_scores) >= 30 and len(np.unique(ref_scores)) == len(ref_scores)
        parity = parities[name]
        assert parity.matched_fraction >= 0.98, f"{name}: {len(parity.pairs)} of {len(ref_scores)} matched"
        assert max(parity.score_differences) <= 1e-3, f"{name}: scores differ by {max(parity.score_differences)}"
        # Masks of 100 pixels or more: IoU >= 0.98; smaller ones: at most 2 pixels differ.
        assert not parity.mask_failures(), f"{name}: {parity.mask_failures()}"
        # Before unmolding: the mask head's probabilities of each detection's class.
        pairs = match_detections(detections.boxes, detections.class_ids, reference[f"{name}/boxes"],
                                 reference[f"{name}/class_ids"])
        worst = max(np.abs(detections.mask_probs[i] - reference[f"{name}/mask_probs"][j]).max() for i, j in pairs)
        assert worst <= 1e-3, f"{name}: mask probabilities differ by {worst}"
    # The seed's boxes are whole pixels, x2 and y2 exclusive.
    assert all(np.array_equal(d.boxes, np.round(d.boxes)) for d in ours)


@pytest.mark.slow
def test_classes_keep_exactly_those_of_the_seeds_detections(model, frames):
    """The seed's detection layer with box_head.classes: RoIs whose top class is another one are dropped
    before NMS and the cap, the rest are the unfiltered detections of those classes (see assert_detections_of_classes)."""
    from tests.test_model import assert_detections_of_classes

    config = copy.deepcopy(model.config)
    config.box_head.detections_per_image = 300
    everything = MaskRCNN(config, {n: v.numpy() for n, v in model.params.items()}).predict(frames[:1])[0]
    ids = (34, 38, 67)                        # the reference frame's most frequent classes
    config = copy.deepcopy(model.config)
    config.box_head.classes = [config.class_names[i] for i in ids]
    config.box_head.detections_per_image = 20
    only = MaskRCNN(models.load_config(config), {n: v.numpy() for n, v in model.params.items()})
    assert only.config.detected_class_ids == ids
    assert_detections_of_classes(only.predict(frames[:1])[0], everything, ids, cap=20)


@pytest.mark.parametrize("shape, output", [((720, 1280), (576, 1024)), ((720, 1280), (288, 512)),
                                           ((480, 640), (768, 1024)), ((333, 517), (659, 1024)),
                                           ((100, 90), (40, 36))])
def test_the_resize_is_the_seeds_skimage_call(shape, output):
    """Channel by channel (twice as fast) gives exactly the seed's one call on (H, W, 3), upscaling and odd
    factors included, and its uint8 truncation."""
    from skimage.transform import resize

    frame = np.random.default_rng(1).integers(0, 256, shape + (3,), dtype=np.uint8)
    seeds = resize(frame, output, order=1, mode="constant", cval=0, clip=True, preserve_range=True,
                   anti_aliasing=False, anti_aliasing_sigma=None)
    ours = resize_like_the_seed(frame, output, preserve_range=True)
    assert ours.dtype == seeds.dtype == np.float64 and np.array_equal(ours, seeds)
    molded = mold_square(frame, output, 1024)
    top, left = (1024 - output[0]) // 2, (1024 - output[1]) // 2
    assert np.array_equal(molded[top:top + output[0], left:left + output[1]], seeds.astype(np.uint8))
    assert molded.sum() == seeds.astype(np.uint8).sum()          # zero padding around the window


@pytest.mark.slow
def test_frames_of_any_sizes_share_one_square_and_one_graph_call(model, frames):
    small = frames[2][::3, ::3].copy()                            # 240x427: upscaled into the same 512 square
    portrait = np.ascontiguousarray(frames[0][:, 300:700])        # 720x400
    together = model.predict([frames[0], small, portrait], masks="rle")
    assert list(model._graphs) == [(512, 512)]
    for frame, batched in zip([frames[0], small, portrait], together):
        alone = model.predict([frame], masks="rle")[0]
        assert len(alone) == len(batched) > 0
        np.testing.assert_array_equal(alone.boxes, batched.boxes)
        np.testing.assert_allclose(alone.scores, batched.scores, atol=1e-5)
        assert [r["counts"] for r in alone.rles] == [r["counts"] for r in batched.rles]
        assert batched.rles[0]["size"] == list(frame.shape[:2])


def test_the_seed_configurations_load_and_keep_their_frame_together():
    for depth in (50, 101):
        config = models.load_config(f"configs/seed_r{depth}_coco.yaml")
        assert config.backbone.depth == depth and config.num_classes == 81 and config.seed_frame
        assert (config.input.min_size, config.input.max_size, config.box_head.score_threshold) == (800, 1024, 0.7)
    with pytest.raises(ConfigError, match=r"seed_r50_coco.yaml.roi_align.method: must be seed with input.resize "
                                          r"square \(the seed's normalised box frame\)"):
        models.load_config("configs/seed_r50_coco.yaml", ["roi_align.method=torchvision"])
    with pytest.raises(ConfigError, match=r"input.max_size: the square's side must be a multiple of size_divisible"):
        models.load_config("configs/seed_r50_coco.yaml", ["input.max_size=1000"])


def test_training_the_seed_configuration_is_refused_in_one_line(model):
    import tensorflow as tf

    with pytest.raises(ConfigError, match="training does not support input.resize square"):
        model.losses(tf.zeros([1, 64, 64, 3], tf.uint8), tf.zeros([1, 1, 4]), tf.zeros([1, 1], tf.int32),
                     tf.zeros([1, 1, 28, 28], tf.uint8), tf.constant(0))


def test_box_coding_seed_is_the_seeds_apply_box_deltas():
    """decode_seed against the seed's apply_box_deltas_graph written out in float32 numpy: times the
    std-dev (0.1, 0.2 as float32), y2 = y1 + h, and no clamp of exp (a log-scale of 6 stays 6)."""
    from models.box_coding import decode, decode_seed

    rng = np.random.default_rng(0)
    corner = rng.random((50, 2), np.float32)
    boxes = np.concatenate([corner, corner + rng.random((50, 2), np.float32) + np.float32(0.01)], axis=1)  # x1 y1 x2 y2
    deltas = rng.normal(size=(50, 4)).astype(np.float32) * 3
    deltas[0] = [0, 0, 60.0, 60.0]                                       # 6 after the std-dev: exp(6)
    ours = decode_seed(deltas, boxes, [10.0, 10.0, 5.0, 5.0]).numpy()
    d = deltas * np.array([0.1, 0.1, 0.2, 0.2], np.float32)
    h, w = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]
    cy = boxes[:, 1] + np.float32(0.5) * h + d[:, 1] * h
    cx = boxes[:, 0] + np.float32(0.5) * w + d[:, 0] * w
    h, w = h * np.exp(d[:, 3]), w * np.exp(d[:, 2])
    y1, x1 = cy - np.float32(0.5) * h, cx - np.float32(0.5) * w
    np.testing.assert_allclose(ours, np.stack([x1, y1, x1 + w, y1 + h], axis=1), rtol=1e-6, atol=1e-7)
    assert ours[0, 2] - ours[0, 0] > 400 * (boxes[0, 2] - boxes[0, 0])
    clamped = decode(deltas[:1], boxes[:1], [10.0, 10.0, 5.0, 5.0], np.log(1000.0 / 16)).numpy()
    assert clamped[0, 2] - clamped[0, 0] < 63 * (boxes[0, 2] - boxes[0, 0])


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_the_seed_configuration_runs_in_a_pipeline_worker(tmp_path, reference, frames):
    """`maskstream convert keras` output, then a real inference worker on a batch of frames of two sizes:
    exactly the model's own results (the model run directly with the worker's one thread)."""
    import ray
    import yaml

    from models.tools.convert import main as convert
    from tests.pipeline_helpers import OneThreadModelActor
    from workers.frames import put_frames
    from workers.inference import InferenceWorkerActor
    from workers.results import instance_records

    assert convert(["keras", str(REFERENCE.with_suffix(".h5")), str(tmp_path / "seed.npz")]) == 0
    config = reference_settings(models.load_config(tmp_path / "seed.yaml"), reference)
    (tmp_path / "seed.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    batch = [frames[0], np.ascontiguousarray(frames[1][100:460, 200:840])]
    worker = InferenceWorkerActor.options(num_cpus=1).remote(str(tmp_path / "seed.yaml"), str(tmp_path / "seed.npz"),
                                                           1.0)
    assert ray.get(worker.ready.remote())["error"] is None
    result = ray.get(worker.infer.remote([put_frames(f[None])[0] for f in batch]))
    ray.kill(worker)
    direct = OneThreadModelActor.remote(str(tmp_path / "seed.yaml"), str(tmp_path / "seed.npz"))
    want = ray.get(direct.predict.remote(batch))
    ray.kill(direct)
    assert len(want[0]) == len(reference["highway_1/scores"])      # the reference's frame: its 71 detections
    for got, expected in zip(result.instances, want):
        assert got == instance_records(expected) and len(got) > 0

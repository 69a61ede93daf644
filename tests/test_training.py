"""Training: targets and losses on hand-made cases, a few steps lower the loss, a checkpoint
resumes at its step, fine-tuning to a new number of classes."""
import numpy as np
import pytest
import tensorflow as tf

import models
from models import losses
from models.mask_rcnn import initial_params
from models.targets import IGNORED, NEGATIVE, POSITIVE, batched_iou, match, sample
from models.train import main as train_main, initial_training_params
from models.weights import read_weights


def test_an_anchor_on_a_box_is_positive_a_far_one_negative_between_ignored():
    gt = tf.constant([[[10, 10, 50, 50], [0, 0, 0, 0]]], tf.float32)
    valid = tf.constant([[True, False]])
    anchors = tf.constant([[10, 10, 50, 50], [200, 200, 240, 240], [10, 10, 50, 80], [10, 10, 50, 62]], tf.float32)
    matched, label = match(batched_iou(gt, anchors), valid, 0.7, 0.3, allow_low_quality=False)
    # IoUs: 1.0, 0.0, 40*40/(40*70)=0.571, 40*40/(40*52)=0.769
    np.testing.assert_array_equal(label.numpy()[0], [POSITIVE, NEGATIVE, IGNORED, POSITIVE])
    np.testing.assert_array_equal(matched.numpy()[0], [0, 0, 0, 0])


def test_low_quality_matches_give_every_object_its_best_anchor():
    gt = tf.constant([[[0, 0, 10, 10]]], tf.float32)
    anchors = tf.constant([[0, 0, 10, 25], [0, 0, 10, 40]], tf.float32)   # IoU 0.4 and 0.25
    _, label = match(batched_iou(gt, anchors), tf.constant([[True]]), 0.7, 0.3, allow_low_quality=True)
    np.testing.assert_array_equal(label.numpy()[0], [POSITIVE, NEGATIVE])


def test_sampling_respects_the_positive_fraction_and_the_total():
    label = tf.constant([[POSITIVE] * 50 + [NEGATIVE] * 500 + [IGNORED] * 10, [POSITIVE] * 3 + [NEGATIVE] * 557])
    pos, neg = sample(label, 64, 0.25, tf.constant(5))
    assert pos.numpy().sum(1).tolist() == [16, 3]
    assert neg.numpy().sum(1).tolist() == [48, 61]
    assert not np.any(pos.numpy() & (label.numpy() != POSITIVE))
    assert not np.any(neg.numpy() & (label.numpy() != NEGATIVE))


def test_mask_loss_looks_only_at_the_ground_truth_class_channel():
    config = models.load_config("configs/test_tiny.yaml")
    params = {k: tf.constant(v) for k, v in initial_params(config, 0).items()}
    pooled = tf.random.stateless_normal((2, 14, 14, 32), seed=(1, 2))
    from models.roi_heads import mask_head
    base = mask_head(params, pooled, tf.constant([1, 2]), 2)
    # Changing the logits kernel of another class (3) changes nothing; of class 1 it does.
    other = dict(params)
    other["mask_head/logits/kernel"] = params["mask_head/logits/kernel"] + tf.one_hot(3, 4)[None, None, None, :]
    np.testing.assert_allclose(mask_head(other, pooled, tf.constant([1, 2]), 2).numpy(), base.numpy())
    own = dict(params)
    own["mask_head/logits/kernel"] = params["mask_head/logits/kernel"] + tf.one_hot(1, 4)[None, None, None, :]
    changed = mask_head(own, pooled, tf.constant([1, 2]), 2).numpy()
    assert not np.allclose(changed[0], base.numpy()[0]) and np.allclose(changed[1], base.numpy()[1])
    perfect = losses.mask_loss(tf.fill((1, 4, 4), 20.0), tf.ones((1, 4, 4)))
    wrong = losses.mask_loss(tf.fill((1, 4, 4), -20.0), tf.ones((1, 4, 4)))
    assert float(perfect) < 1e-6 and float(wrong) > 19


def test_smooth_l1_is_quadratic_then_linear():
    x = tf.constant([0.0, 0.05, 1.0])
    np.testing.assert_allclose(losses.smooth_l1(x).numpy(), [0.0, 0.5 * 0.05 ** 2 * 9, 1.0 - 0.5 / 9], rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from models.scenes import main as scenes_main
    path = tmp_path_factory.mktemp("data") / "set"
    assert scenes_main(["write", str(path), "--images", "4", "--seed", "3", "--width", "256", "--height", "144"]) == 0
    return path


def test_training_lowers_the_loss_and_resumes_from_a_checkpoint(tiny_set, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--config", "configs/test_tiny.yaml", "--data", str(tiny_set), "--out", str(out), "--no-progress"]
    assert train_main(args + ["--steps", "3"]) == 0
    _, meta = read_weights(out / "checkpoint.npz")
    assert meta["step"] == 3
    first, _ = read_weights(out / "model.npz")
    assert train_main(args + ["--steps", "5", "--resume"]) == 0
    _, meta = read_weights(out / "checkpoint.npz")
    assert meta["step"] == 5
    resumed, _ = read_weights(out / "model.npz")
    assert any(not np.array_equal(first[k], resumed[k]) for k in first)

    # Overfitting one small batch: the total loss falls.
    from models.data import CocoDataset
    from models.mask_rcnn import MaskRCNN
    from models.train import Trainer, training_batches
    config = models.load_config("configs/test_tiny.yaml")
    config.train.learning_rate = 2e-3
    config.train.warmup_steps = 1
    config.train.steps = 40
    trainer = Trainer(MaskRCNN(config, initial_params(config, 0), trainable=True))
    batch = next(iter(training_batches(CocoDataset(tiny_set), config, 0)))
    totals = [float(trainer.train_step(batch["image"], batch["boxes"], batch["class_ids"], batch["masks"])["total"])
              for _ in range(25)]
    assert np.mean(totals[-5:]) < 0.7 * np.mean(totals[:3]), totals


def test_fine_tuning_keeps_what_fits_and_refreshes_class_layers(tmp_path):
    config = models.load_config("configs/test_tiny.yaml")
    source = models.save_weights(tmp_path / "src.npz", initial_params(config, 7))
    config.class_names = ["__background__", "a", "b", "c", "d", "e"]
    params = initial_training_params(config, str(source), seed=1)
    src, _ = read_weights(source)
    assert np.array_equal(params["backbone/conv1/kernel"], src["backbone/conv1/kernel"])
    assert params["box_head/cls_score/kernel"].shape == (64, 6)


def test_train_cli_reports_a_missing_data_set_in_one_line(tmp_path, capsys):
    code = train_main(["--config", "configs/test_tiny.yaml", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


def test_train_cli_overrides_the_learning_rate_and_rejects_a_bad_one(tiny_set, tmp_path, capsys):
    args = ["--config", "configs/test_tiny.yaml", "--data", str(tiny_set), "--no-progress", "--steps", "1"]
    assert train_main(args + ["--out", str(tmp_path / "zero-lr"), "--learning-rate", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learning_rate" in err[0], err
    # The override reaches the optimiser: a tiny rate moves the weights far less than the YAML's.
    moved = {}
    for rate in ("1e-8", "1e-2"):
        out = tmp_path / rate
        assert train_main(args + ["--out", str(out), "--learning-rate", rate]) == 0
        config = models.load_config("configs/test_tiny.yaml")
        before = initial_training_params(config, None, config.train.seed)
        after, _ = read_weights(out / "model.npz")
        moved[rate] = max(float(np.abs(after[k] - before[k]).max()) for k in before if k in after)
    assert moved["1e-8"] < 1e-5 < moved["1e-2"], moved


def test_a_model_with_56x56_masks_trains_and_predicts_56x56_masks(tiny_set, tmp_path):
    import cv2
    import yaml
    config = yaml.safe_load(open("configs/test_tiny.yaml"))
    config["mask_head"]["deconvs"] = 2
    config_path = tmp_path / "tiny56.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    assert train_main(["--config", str(config_path), "--data", str(tiny_set), "--out", str(out),
                       "--no-progress", "--steps", "2"]) == 0
    weights, _ = read_weights(out / "model.npz")
    assert weights["mask_head/deconv2/kernel"].shape == (2, 2, 32, 32)
    model = models.load_model(str(config_path), str(out / "model.npz"))
    image = cv2.cvtColor(cv2.imread(str(next((tiny_set / "images").iterdir()))), cv2.COLOR_BGR2RGB)
    detections = model.predict([image], masks="full")[0]
    assert len(detections) > 0 and detections.mask_probs.shape[1:] == (56, 56)
    assert detections.masks.shape[1:] == image.shape[:2]

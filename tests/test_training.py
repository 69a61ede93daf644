"""Training: targets and losses on hand-made cases (beside the stages they train), the training
pass runs the heads in the compute precision, a few steps lower the loss, an interrupted run
resumed from its checkpoint ends where the uninterrupted one does, fine-tuning to a new number of
classes keeps what fits and re-initialises the class layers."""
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import models
from models.data.scenes import main as scenes_main
from models.mask_rcnn import MaskRCNN, initial_params
from models.matching import IGNORED, NEGATIVE, POSITIVE, batched_iou, match, sample, smooth_l1
from models.roi_heads import mask_head, mask_loss, roi_mask_targets
from models.training.batches import canvas_size, mini_mask_size, training_augmentation, training_batches
from models.training.train import main as train_main
from models.training.trainer import Trainer, initial_training_params
from models.weights import read_weights

TINY = "configs/test_tiny.yaml"


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
    config = models.load_config(TINY)
    params = {k: tf.constant(v) for k, v in initial_params(config, 0).items()}
    pooled = tf.random.stateless_normal((2, 14, 14, 32), seed=(1, 2))
    base = mask_head(params, pooled, tf.constant([1, 2]), 2)
    # Changing the logits kernel of another class (3) changes nothing; of class 1 it does.
    other = dict(params)
    other["mask_head/logits/kernel"] = params["mask_head/logits/kernel"] + tf.one_hot(3, 4)[None, None, None, :]
    np.testing.assert_allclose(mask_head(other, pooled, tf.constant([1, 2]), 2).numpy(), base.numpy())
    own = dict(params)
    own["mask_head/logits/kernel"] = params["mask_head/logits/kernel"] + tf.one_hot(1, 4)[None, None, None, :]
    changed = mask_head(own, pooled, tf.constant([1, 2]), 2).numpy()
    assert not np.allclose(changed[0], base.numpy()[0]) and np.allclose(changed[1], base.numpy()[1])
    perfect = mask_loss(tf.fill((1, 4, 4), 20.0), tf.ones((1, 4, 4)))
    wrong = mask_loss(tf.fill((1, 4, 4), -20.0), tf.ones((1, 4, 4)))
    assert float(perfect) < 1e-6 and float(wrong) > 19


def test_smooth_l1_is_quadratic_then_linear():
    x = tf.constant([0.0, 0.05, 1.0])
    np.testing.assert_allclose(smooth_l1(x, 1 / 9).numpy(), [0.0, 0.5 * 0.05 ** 2 * 9, 1.0 - 0.5 / 9], rtol=1e-6)


def test_roi_mask_targets_sample_the_mini_masks_at_cell_centres():
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 256, (2, 8, 8)).astype(np.uint8)
    gt = np.array([[10, 20, 50, 40], [0, 0, 8, 16]], np.float32)
    same = roi_mask_targets(masks, gt, gt[[1, 0]], [1, 0], size=8).numpy()
    np.testing.assert_allclose(same, masks[[1, 0]] / 255.0, atol=1e-5)
    halved = roi_mask_targets(masks, gt, gt[:1], [0], size=4).numpy()[0]
    np.testing.assert_allclose(halved, masks[0].reshape(4, 2, 4, 2).mean(axis=(1, 3)) / 255.0, atol=1e-5)
    shifted = roi_mask_targets(masks, gt, gt[:1] + [20, 0, 20, 0], [0], size=8).numpy()[0]
    np.testing.assert_allclose(shifted[:, :4], masks[0][:, 4:] / 255.0, atol=1e-5)   # right half of the mask
    np.testing.assert_array_equal(shifted[:, 4:], 0)                                   # beyond the box
    assert roi_mask_targets(tf.constant(masks), gt, [[100, 100, 120, 120]], [0]).numpy().max() == 0


@pytest.mark.slow
def test_training_runs_the_heads_in_the_compute_precision():
    """With precision bfloat16 every convolution, transposed convolution and matrix product of the
    training pass (box and mask heads included, as at inference) runs in bfloat16."""
    config = models.load_config(TINY, ["precision=bfloat16"])
    model = MaskRCNN(config, initial_params(config, 0), trainable=True)
    g, m = config.train.max_instances, 2 * config.mask_size
    specs = [tf.TensorSpec((1, 192, 352, 3), tf.uint8), tf.TensorSpec((1, g, 4), tf.float32),
             tf.TensorSpec((1, g), tf.int32), tf.TensorSpec((1, g, m, m), tf.uint8), tf.TensorSpec((), tf.int32)]
    graph = tf.function(model.losses).get_concrete_function(*specs).graph
    heavy = [op for op in graph.get_operations() if op.type in ("Conv2D", "Conv2DBackpropInput", "MatMul", "Einsum")]
    kinds = {op.type for op in heavy}
    assert {"Conv2D", "Conv2DBackpropInput", "MatMul", "Einsum"} <= kinds
    assert [op.name for op in heavy if op.get_attr("T") != tf.bfloat16] == []


def test_fine_tuning_keeps_what_fits_and_refreshes_class_layers(tmp_path):
    config = models.load_config(TINY)
    source = models.save_weights(tmp_path / "src.npz", initial_params(config, 7))
    src, _ = read_weights(source)
    config.class_names = ["__background__", "a", "b", "c", "d", "e"]
    params = initial_training_params(config, str(source), seed=1)
    fresh = initial_params(config, 1)
    refreshed = {name for name in params if name not in src or src[name].shape != params[name].shape}
    assert refreshed == {"box_head/cls_score/kernel", "box_head/cls_score/bias", "box_head/bbox_pred/kernel",
                         "box_head/bbox_pred/bias", "mask_head/logits/kernel", "mask_head/logits/bias"}
    for name in params:
        if name in refreshed:     # re-initialised as a new model of this config would be, not kept
            np.testing.assert_array_equal(params[name], fresh[name], err_msg=name)
        else:                     # every layer that fits holds the init weights' values
            np.testing.assert_array_equal(params[name], src[name], err_msg=name)
    # The init weights are not the fresh ones, so the comparisons above tell kept from re-initialised.
    assert not np.array_equal(src["backbone/conv1/kernel"], fresh["backbone/conv1/kernel"])
    assert np.abs(params["box_head/cls_score/kernel"]).max() > 0


def test_train_cli_reports_a_missing_data_set_in_one_line(tmp_path, capsys):
    code = train_main(["--config", TINY, "--data", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "set"
    assert scenes_main(["write", str(path), "--images", "4", "--seed", "3", "--width", "256", "--height", "144"]) == 0
    return path


def test_training_batches_are_the_augmented_stream_on_the_canvas(tiny_set):
    """Batch k of the training input holds examples 2k, 2k+1 of the data set's stream through the one
    augmentation path (short side min_size x the jitter, flips), each in the canvas's top-left corner."""
    from models.data.coco import CocoDataset
    config = models.load_config(TINY)
    data = CocoDataset(tiny_set, mask_size=mini_mask_size(config))
    batch = next(iter(training_batches(data, config, seed=5, start=1)))
    stream = data.examples(training=True, seed=5, augmentation=training_augmentation(config), start=2)
    low, high = config.train.scale_jitter
    sizes = set()
    for i, example in zip(range(2), stream):
        h, w = example["image"].shape[:2]
        sizes.add((h, w))
        assert config.input.min_size * low - 1 <= min(h, w) <= config.input.min_size * high
        assert batch["image"].shape[1:3] == canvas_size(config)
        np.testing.assert_array_equal(batch["image"][i, :h, :w], example["image"])
        assert not batch["image"][i, h:].numpy().any() and not batch["image"][i, :, w:].numpy().any()
        n = len(example["class_ids"])
        order = np.argsort(-(example["boxes"][:, 2] - example["boxes"][:, 0]) * (example["boxes"][:, 3] - example["boxes"][:, 1]))
        np.testing.assert_array_equal(batch["boxes"][i, :n], example["boxes"][order])
        np.testing.assert_array_equal(batch["masks"][i, :n], example["masks"][order])
        assert not batch["class_ids"][i, n:].numpy().any()
    assert sizes != {(144, 256)}            # resized, not the images as stored


def train_command(data, out, *extra):
    return [sys.executable, "-m", "models.training.train", "--config", TINY, "--data", str(data), "--out", str(out),
            "--no-progress", "--steps", "6", "--set", "train.warmup_steps=1", "--set", "train.checkpoint_every=1",
            "--set", "train.deterministic=true", *extra]


# The training command sending itself a real signal (SIGINT: Ctrl-C, or SIGTERM) right after its
# checkpoint at step 2: the interrupt at a known step, however slow or loaded the machine.
SIGNAL_AFTER_STEP_2 = """
import os, signal, sys
from models.training import train, trainer
save, sent, signum = trainer.Trainer.save_checkpoint, [], getattr(signal, sys.argv.pop(1))
def save_then_signal(self, path):
    save(self, path)
    if int(self.step.numpy()) == 2 and not sent:
        sent.append(True)  # before the signal: its KeyboardInterrupt comes as soon as kill returns
        os.kill(os.getpid(), signum)
trainer.Trainer.save_checkpoint = save_then_signal
sys.exit(train.main(sys.argv[1:]))
"""


def interrupted_after_step_2(command: list[str], signal_name: str) -> subprocess.CompletedProcess:
    """`command` (a train_command) run with SIGNAL_AFTER_STEP_2."""
    return subprocess.run([command[0], "-c", SIGNAL_AFTER_STEP_2, signal_name, *command[3:]],
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_a_run_interrupted_and_resumed_ends_where_the_uninterrupted_one_does(tiny_set, tmp_path):
    """Ctrl-C after the checkpoint at step 2, then --resume: the same six steps on the same batches
    from the same state, so the same parameters to the last bit (TensorFlow's deterministic kernels).
    A resume that restarted at step 0, lost the optimiser's slots or replayed other batches would
    end elsewhere or say it resumed elsewhere."""
    whole = subprocess.run(train_command(tiny_set, tmp_path / "whole"), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]
    checkpoint = tmp_path / "parts" / "checkpoint.npz"
    run = interrupted_after_step_2(train_command(tiny_set, tmp_path / "parts"), "SIGINT")
    step = read_weights(checkpoint)[1]["step"]
    assert run.returncode == 130 and "interrupted at step 2 of 6; run again with --resume" in run.stderr, \
        run.stderr[-2000:]
    assert step == 2 and not (tmp_path / "parts" / "model.npz").exists()

    resumed = subprocess.run(train_command(tiny_set, tmp_path / "parts", "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {checkpoint} at step {step} of 6" in resumed.stdout
    assert read_weights(checkpoint)[1]["step"] == 6
    want, meta = read_weights(tmp_path / "whole" / "model.npz")
    got, _ = read_weights(tmp_path / "parts" / "model.npz")
    assert meta["made_by"] == "training" and meta["config"]["train"]["steps"] == 6
    assert sorted(got) == sorted(want)
    assert [name for name in want if not np.array_equal(want[name], got[name])] == []


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_as_ctrl_c_does(tiny_set, tmp_path):
    """docker stop, systemd or a pre-empted node send SIGTERM: the run stops with its checkpoint
    at the step reached and says how to resume (killed, it would lose the steps since its last
    checkpoint and say nothing)."""
    run = interrupted_after_step_2(train_command(tiny_set, tmp_path), "SIGTERM")
    assert run.returncode == 130 and "interrupted at step 2 of 6; run again with --resume" in run.stderr, \
        run.stderr[-2000:]
    assert read_weights(tmp_path / "checkpoint.npz")[1]["step"] == 2


@pytest.mark.slow
def test_a_few_steps_on_one_batch_lower_the_loss(tiny_set):
    from models.data.coco import CocoDataset
    config = models.load_config(TINY)
    config.train.learning_rate = 2e-3
    config.train.warmup_steps = 1
    config.train.steps = 40
    trainer = Trainer(MaskRCNN(config, initial_params(config, 0), trainable=True))
    batch = next(iter(training_batches(CocoDataset(tiny_set), config, 0)))
    totals = [float(trainer.train_step(batch["image"], batch["boxes"], batch["class_ids"], batch["masks"])["total"])
              for _ in range(25)]
    assert np.mean(totals[-5:]) < 0.7 * np.mean(totals[:3]), totals


@pytest.mark.slow
def test_train_cli_overrides_the_learning_rate_and_rejects_a_bad_one(tiny_set, tmp_path, capsys):
    args = ["--config", TINY, "--data", str(tiny_set), "--no-progress", "--steps", "1"]
    assert train_main(args + ["--out", str(tmp_path / "zero-lr"), "--learning-rate", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learning_rate" in err[0], err
    # The override reaches the optimiser: a tiny rate moves the weights far less than the YAML's.
    moved = {}
    for rate in ("1e-8", "1e-2"):
        out = tmp_path / rate
        assert train_main(args + ["--out", str(out), "--learning-rate", rate]) == 0
        config = models.load_config(TINY)
        before = initial_training_params(config, None, config.train.seed)
        after, _ = read_weights(out / "model.npz")
        moved[rate] = max(float(np.abs(after[k] - before[k]).max()) for k in before if k in after)
    assert moved["1e-8"] < 1e-5 < moved["1e-2"], moved


@pytest.mark.slow
def test_a_model_with_56x56_masks_trains_and_predicts_56x56_masks(tiny_set, tmp_path):
    import cv2
    import yaml
    config = yaml.safe_load(open(TINY))
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

"""Training Mask R-CNN: the training graph (RPN targets, proposal sampling, the five losses),
the optimiser step, checkpoints, resume, and the command line.

    python -m models.train --config configs/default_model.yaml --data DIR_OR_SPEC --out DIR
        [--steps N] [--resume] [--init WEIGHTS] [--tensorboard] [--verbose]

Every batch is resized (short side min_size x a random scale jitter), flipped at random and
padded into one fixed canvas, so the step is compiled once. `--init` starts from any weights
file of the same backbone (for example torchvision's COCO weights converted): parameters whose
shape differs, the class-specific layers when the number of classes changes, start afresh.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf
import yaml

from . import box_coding, losses, preprocess
from .config import ConfigError, ModelConfig, load_config
from .data import MASK_SIZE, CocoDataset, DataError, roi_mask_targets
from .mask_rcnn import (MaskRCNN, architecture_record, feature_anchors, initial_params, pool, pooling_features,
                         pyramid)
from .roi_heads import box_head, mask_head
from .rpn import rpn_head, select_proposals
from .targets import IGNORED, batched_iou, match, sample
from .weights import WeightsError, read_weights, save_weights

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.npz"
FINAL = "model.npz"


def canvas_size(config: ModelConfig) -> tuple[int, int]:
    """The fixed padded training canvas: the largest jittered resize of a max_size x min_size frame."""
    high = config.train.scale_jitter[1]
    return preprocess.padded_size(int(config.input.min_size * high), int(config.input.max_size * high),
                                  config.input.size_divisible)


def prepare_example(example: dict, config: ModelConfig, rng: np.random.Generator) -> dict:
    """One data-set example -> fixed-shape arrays on the training canvas.

    image uint8 (Hc, Wc, 3); boxes (G, 4) float32 in canvas pixels; class_ids (G,) int32 (0 pads);
    masks (G, M, M) uint8 mini masks. Instances beyond max_instances (the smallest) are dropped.
    """
    image = example["image"]
    height, width = image.shape[:2]
    low, high = config.train.scale_jitter
    min_size = config.input.min_size * rng.uniform(low, high)
    max_size = config.input.max_size * high
    new_h, new_w = preprocess.resized_size(height, width, min_size, max_size)
    boxes = example["boxes"] * np.array([new_w / width, new_h / height] * 2, np.float32)
    masks = example["masks"]
    image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if config.train.flip and rng.random() < 0.5:
        image = image[:, ::-1]
        boxes = np.stack([new_w - boxes[:, 2], boxes[:, 1], new_w - boxes[:, 0], boxes[:, 3]], axis=1)
        masks = masks[:, :, ::-1]
    ch, cw = canvas_size(config)
    canvas = np.zeros((ch, cw, 3), np.uint8)
    canvas[:new_h, :new_w] = image
    g = config.train.max_instances
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.argsort(-areas)[:g]
    out_boxes = np.zeros((g, 4), np.float32)
    out_classes = np.zeros((g,), np.int32)
    out_masks = np.zeros((g,) + masks.shape[1:], np.uint8)
    out_boxes[:len(order)] = boxes[order]
    out_classes[:len(order)] = example["class_ids"][order]
    out_masks[:len(order)] = masks[order]
    return {"image": canvas, "boxes": out_boxes, "class_ids": out_classes, "masks": out_masks}


def training_batches(data: CocoDataset, config: ModelConfig, seed: int) -> tf.data.Dataset:
    """An endless tf.data pipeline of prepared, batched examples."""
    g, m = config.train.max_instances, data.mask_size
    ch, cw = canvas_size(config)

    def generate():
        rng = np.random.default_rng(seed)
        while True:
            for example in data.examples(training=True, seed=int(rng.integers(1 << 31)), flip=False,
                                         scale_range=(1.0, 1.0)):
                if len(example["class_ids"]):
                    yield prepare_example(example, config, rng)

    signature = {"image": tf.TensorSpec((ch, cw, 3), tf.uint8), "boxes": tf.TensorSpec((g, 4), tf.float32),
                 "class_ids": tf.TensorSpec((g,), tf.int32), "masks": tf.TensorSpec((g, m, m), tf.uint8)}
    return (tf.data.Dataset.from_generator(generate, output_signature=signature)
            .batch(config.train.batch_size, drop_remainder=True).prefetch(2))


def training_losses(params, config: ModelConfig, images, gt_boxes, gt_classes, gt_masks, seed) -> dict:
    """The five losses of one batch.

    images uint8 (B, Hc, Wc, 3) on the canvas; gt_boxes (B, G, 4); gt_classes (B, G) (0 pads);
    gt_masks (B, G, M, M) mini masks; seed int32 scalar for the samplers.
    """
    cfg = config
    batch, ch, cw = images.shape[0], images.shape[1], images.shape[2]
    canvas = (int(ch), int(cw))
    x = preprocess.normalize_resize_pad(images, canvas, canvas, cfg.input.mean, cfg.input.std)
    features = pyramid(params, x, cfg)
    logits, deltas = rpn_head(params, features)
    logits = [tf.cast(t, tf.float32) for t in logits]
    deltas = [tf.cast(t, tf.float32) for t in deltas]
    anchors = feature_anchors(features, canvas, cfg)
    gt_valid = gt_classes > 0

    # RPN: anchors matched to ground truth, a balanced sample, objectness and box losses.
    all_anchors = tf.constant(np.concatenate(anchors))
    matched, label = match(batched_iou(gt_boxes, all_anchors), gt_valid, cfg.rpn.fg_iou_threshold,
                           cfg.rpn.bg_iou_threshold, allow_low_quality=True)
    pos, neg = sample(label, cfg.rpn.batch_size_per_image, cfg.rpn.positive_fraction, seed)
    rpn_targets = box_coding.encode(tf.gather(gt_boxes, matched, batch_dims=1), all_anchors, cfg.rpn.box_weights)
    rpn_sampled = tf.reduce_sum(tf.cast(tf.logical_or(pos, neg), tf.int32))
    result = {"rpn_objectness": losses.objectness_loss(tf.concat(logits, 1), pos, neg),
              "rpn_box": losses.box_loss(tf.concat(deltas, 1), rpn_targets, pos, rpn_sampled)}

    # RoI heads: proposals plus the ground truth, matched and sampled.
    proposals, _, proposal_valid = select_proposals(logits, deltas, anchors, canvas, cfg.rpn, cfg.box_xform_clip,
                                                    training=True)
    proposals = tf.concat([proposals, gt_boxes], axis=1)
    proposal_valid = tf.concat([proposal_valid, gt_valid], axis=1)
    matched, label = match(batched_iou(gt_boxes, proposals), gt_valid, cfg.box_head.fg_iou_threshold,
                           cfg.box_head.bg_iou_threshold, allow_low_quality=False)
    label = tf.where(proposal_valid, label, IGNORED)
    pos, neg = sample(label, cfg.box_head.batch_size_per_image, cfg.box_head.positive_fraction, seed + 2)
    s = min(cfg.box_head.batch_size_per_image, int(proposals.shape[1]))
    sampled = tf.logical_or(pos, neg)
    _, pick = tf.math.top_k(tf.cast(sampled, tf.float32), k=s)          # the sampled RoIs first
    rois = tf.reshape(tf.gather(proposals, pick, batch_dims=1), [-1, 4])
    roi_valid = tf.reshape(tf.gather(sampled, pick, batch_dims=1), [-1])
    roi_pos = tf.reshape(tf.gather(pos, pick, batch_dims=1), [-1])
    roi_gt = tf.reshape(tf.gather(matched, pick, batch_dims=1), [-1])
    frame = tf.repeat(tf.range(batch), s)
    gt_flat = frame * gt_boxes.shape[1] + roi_gt
    flat_gt_boxes = tf.reshape(gt_boxes, [-1, 4])
    roi_class = tf.where(roi_pos, tf.gather(tf.reshape(gt_classes, [-1]), gt_flat), 0)

    features = pooling_features(features)
    pooled = pool(features, rois, frame, canvas, cfg.roi_align.box_output_size, cfg)
    class_logits, box_deltas = box_head(params, pooled)
    class_logits = tf.cast(class_logits, tf.float32)
    box_deltas = tf.reshape(tf.cast(box_deltas, tf.float32), [-1, cfg.num_classes, 4])
    roi_targets = box_coding.encode(tf.gather(flat_gt_boxes, gt_flat), rois, cfg.box_head.box_weights)
    result["box_classifier"] = losses.classification_loss(class_logits, roi_class, roi_valid)
    result["box_regression"] = losses.box_loss(tf.gather(box_deltas, roi_class, batch_dims=1), roi_targets,
                                               roi_pos, tf.reduce_sum(tf.cast(roi_valid, tf.int32)))

    # Mask head on the positive RoIs, against the ground-truth class's channel only.
    positive = tf.where(roi_pos)[:, 0]
    pos_rois = tf.gather(rois, positive)
    pooled = pool(features, pos_rois, tf.gather(frame, positive), canvas, cfg.roi_align.mask_output_size, cfg)
    mask_logits = mask_head(params, pooled, tf.gather(roi_class, positive), len(cfg.mask_head.conv_dims),
                            cfg.mask_head.deconvs)
    targets = roi_mask_targets(tf.reshape(gt_masks, [-1] + gt_masks.shape[2:].as_list()), flat_gt_boxes, pos_rois,
                               tf.gather(gt_flat, positive), size=cfg.mask_size)
    result["mask"] = losses.mask_loss(tf.cast(mask_logits, tf.float32), targets)
    return result


def trainable_names(config: ModelConfig, names) -> list[str]:
    """All parameters except the backbone stages that stay frozen (of stem, res2..res5, the
    last `trainable_stages` train)."""
    stages = ["backbone/conv1", "backbone/layer1", "backbone/layer2", "backbone/layer3", "backbone/layer4"]
    frozen = stages[:5 - config.backbone.trainable_stages]
    return [n for n in sorted(names) if not any(n.startswith(f + "/") for f in frozen)]


def learning_rate(step, config: ModelConfig):
    """Linear warm-up, then cosine decay to zero at the last step."""
    t = config.train
    step = tf.cast(step, tf.float32)
    warm = tf.minimum(1.0, (step + 1.0) / max(t.warmup_steps, 1))
    progress = tf.clip_by_value((step - t.warmup_steps) / max(t.steps - t.warmup_steps, 1), 0.0, 1.0)
    return t.learning_rate * warm * 0.5 * (1.0 + tf.cos(math.pi * progress))


class Trainer(tf.Module):
    """The model's variables, the optimiser's slots and the compiled training step."""

    def __init__(self, model: MaskRCNN):
        super().__init__(name="trainer")
        self.model = model
        self.config = model.config
        self.names = trainable_names(self.config, model.params)
        self.variables_ = [model.params[n] for n in self.names]
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.slots = {f"{kind}/{n}": tf.Variable(tf.zeros_like(v), trainable=False)
                      for n, v in zip(self.names, self.variables_) for kind in self._slot_kinds()}
        self.train_step = tf.function(self._train_step)

    def _slot_kinds(self) -> tuple[str, ...]:
        return ("m", "v") if self.config.train.optimizer == "adamw" else ("m",)

    def _train_step(self, images, boxes, class_ids, masks):
        t = self.config.train
        seed = tf.cast(self.step, tf.int32) * 4 + t.seed * 1000003
        with tf.GradientTape() as tape:
            parts = training_losses(self.model.params, self.config, images, boxes, class_ids, masks, seed)
            total = tf.add_n(list(parts.values()))
        grads = tape.gradient(total, self.variables_)
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g) for g, v in zip(grads, self.variables_)]
        if t.clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, t.clip_norm)
        lr = learning_rate(self.step, self.config)
        for name, var, grad in zip(self.names, self.variables_, grads):
            self._update(name, var, grad, lr)
        self.step.assign_add(1)
        return dict(parts, total=total, lr=lr)

    def _update(self, name, var, grad, lr):
        t = self.config.train
        decay = t.weight_decay if name.endswith("/kernel") else 0.0
        m = self.slots[f"m/{name}"]
        if t.optimizer == "sgd":
            m.assign(t.momentum * m + grad + decay * var)
            var.assign_sub(lr * m)
            return
        v = self.slots[f"v/{name}"]
        b1, b2, eps = 0.9, 0.999, 1e-8
        step = tf.cast(self.step, tf.float32) + 1.0
        m.assign(b1 * m + (1 - b1) * grad)
        v.assign(b2 * v + (1 - b2) * grad * grad)
        update = (m / (1 - b1 ** step)) / (tf.sqrt(v / (1 - b2 ** step)) + eps)
        var.assign_sub(lr * (update + decay * var))

    def save_checkpoint(self, path: Path) -> None:
        arrays = {f"param/{n}": v.numpy() for n, v in self.model.params.items()}
        arrays.update({f"slot/{n}": v.numpy() for n, v in self.slots.items()})
        save_weights(path, arrays, {"step": int(self.step.numpy()), "kind": "checkpoint",
                                    **architecture_record(self.config)})

    def restore_checkpoint(self, path: Path) -> int:
        arrays, meta = read_weights(path)
        if meta.get("kind") != "checkpoint":
            raise WeightsError(f"{path}: not a training checkpoint")
        for name, var in self.model.params.items():
            value = arrays.get(f"param/{name}")
            if value is None or value.shape != tuple(var.shape):
                raise WeightsError(f"{path}: checkpoint does not fit the configuration (parameter {name})")
            var.assign(value)
        for name, var in self.slots.items():
            if f"slot/{name}" in arrays:
                var.assign(arrays[f"slot/{name}"])
        self.step.assign(int(meta["step"]))
        return int(meta["step"])


def initial_training_params(config: ModelConfig, init: str | None, seed: int) -> dict[str, np.ndarray]:
    """Random parameters, overwritten by every parameter of `init` whose name and shape fit.

    Class-specific layers (or anything else) that do not fit keep their fresh values, so a
    model pretrained on COCO fine-tunes to a data set with another number of classes.
    """
    params = initial_params(config, seed)
    if init:
        loaded, _ = read_weights(init)
        fitting = {n: v for n, v in loaded.items() if n in params and v.shape == params[n].shape}
        if len(fitting) < len(params) // 2:
            raise WeightsError(f"{init}: only {len(fitting)} of {len(params)} parameters fit this configuration")
        fresh = sorted(set(params) - set(fitting))
        if fresh:
            log.warning("%s: %d parameters start afresh (%s)", init, len(fresh), ", ".join(fresh[:3]))
        params.update(fitting)
    return params


def train(config: ModelConfig, data_spec: str, out_dir: Path, resume: bool = False, init: str | None = None,
          tensorboard: bool = False, progress: bool = True) -> Path:
    """Train and write out_dir/model.npz (and checkpoints, config.yaml). Returns the weights path."""
    from tqdm import tqdm

    # Mini masks at twice the predicted mask's resolution (at least 56), so targets stay sharp.
    data = CocoDataset(data_spec, mask_size=max(MASK_SIZE, 2 * config.mask_size))
    if list(data.class_names) != list(config.class_names):
        log.info("classes from the data set: %s", ", ".join(data.class_names[1:]))
        config.class_names = list(data.class_names)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    model = MaskRCNN(config, initial_training_params(config, init, config.train.seed), trainable=True)
    trainer = Trainer(model)
    checkpoint = out_dir / CHECKPOINT
    start = trainer.restore_checkpoint(checkpoint) if resume and checkpoint.is_file() else 0
    if resume and not checkpoint.is_file():
        log.warning("%s: no checkpoint to resume from; starting at step 0", checkpoint)
    writer = tf.summary.create_file_writer(str(out_dir / "tensorboard")) if tensorboard else None
    batches = iter(training_batches(data, config, config.train.seed + start))
    bar = tqdm(total=config.train.steps, initial=start, disable=not progress, unit="step", dynamic_ncols=True)
    began = time.time()
    for step in range(start, config.train.steps):
        batch = next(batches)
        parts = trainer.train_step(batch["image"], batch["boxes"], batch["class_ids"], batch["masks"])
        values = {k: float(v) for k, v in parts.items()}
        if not math.isfinite(values["total"]):
            raise FloatingPointError(f"step {step}: the loss is not finite ({values})")
        bar.set_postfix({k: f"{v:.3f}" for k, v in values.items() if k in ("total", "rpn_objectness", "box_classifier", "mask")})
        bar.update(1)
        if writer is not None:
            with writer.as_default(step=step):
                for k, v in values.items():
                    tf.summary.scalar(k, v)
        if (step + 1) % config.train.checkpoint_every == 0 or step + 1 == config.train.steps:
            trainer.save_checkpoint(checkpoint)
    bar.close()
    path = model.save(out_dir / FINAL)
    log.info("trained %d steps in %.0f s", config.train.steps - start, time.time() - began)
    return path


def overrides(args: argparse.Namespace) -> list[str]:
    """--steps, --batch-size and --learning-rate as config overrides, then every --set in order."""
    named = [("train.steps", args.steps), ("train.batch_size", args.batch_size),
             ("train.learning_rate", args.learning_rate)]
    return [f"{key}={value}" for key, value in named if value is not None] + args.set


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="model YAML (with a train: section)")
    parser.add_argument("--data", required=True, help="data directory (annotations.json + images/) or coco:ANN:IMGS")
    parser.add_argument("--out", required=True, type=Path, help="output directory: model.npz, checkpoint.npz")
    parser.add_argument("--steps", type=int, help="override train.steps")
    parser.add_argument("--batch-size", type=int, help="override train.batch_size")
    parser.add_argument("--learning-rate", type=float, help="override train.learning_rate (the peak, after warm-up)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any model config value, e.g. --set input.min_size=320; repeatable")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    parser.add_argument("--init", help="start from these weights (non-fitting layers start afresh)")
    parser.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs to OUT/tensorboard")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        config = load_config(args.config, overrides(args))
        path = train(config, args.data, args.out, args.resume, args.init, args.tensorboard, not args.no_progress)
    except (ConfigError, DataError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

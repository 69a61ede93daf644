"""The trainer: the compiled training step on the model's own losses (`MaskRCNN.losses`), the
optimiser (AdamW or SGD with momentum, `train:` in the model YAML), the learning rate (linear
warm-up, then cosine decay to zero at the last step), checkpoints and resume, and starting from
other weights (`--init`: every parameter that fits is kept, the rest starts afresh).

`train_model` is the whole run: data set, output directory, steps, checkpoints, final weights.
Ctrl-C writes a checkpoint at the step reached before it stops (`TrainingInterrupted`). A run
resumed from its checkpoint (`resume=True`) continues where the uninterrupted run would be: the
parameters and optimiser slots come from the checkpoint, the step from its record, and the
batches from `training_batches(..., start=step)`; with `train.deterministic` (TensorFlow's
deterministic kernels: the RoIAlign gradient otherwise sums in a varying order) it ends on the
same parameters to the last bit.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import yaml

from ..config import ModelConfig
from ..data.coco import CocoDataset
from ..errors import TrainingInterrupted
from ..mask_rcnn import MaskRCNN, config_name, initial_params, require_trainable, weights_record
from ..weights import WeightsError, describe_record, first_mismatch, read_weights, save_weights
from .batches import mini_mask_size, training_batches

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.npz"
FINAL = "model.npz"
BACKBONE_STAGES = ("backbone/conv1", "backbone/layer1", "backbone/layer2", "backbone/layer3", "backbone/layer4")


def trainable_names(config: ModelConfig, names) -> list[str]:
    """All parameters except the backbone stages that stay frozen (of stem, res2..res5, the
    last `trainable_stages` train)."""
    frozen = BACKBONE_STAGES[:5 - config.backbone.trainable_stages]
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
        """One batch (as `training_batches` gives it) -> the five losses, their total and the learning rate."""
        t = self.config.train
        seed = tf.cast(self.step, tf.int32) * 4 + t.seed * 1000003
        with tf.GradientTape() as tape:
            parts = self.model.losses(images, boxes, class_ids, masks, seed)
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
        b1, b2, eps = t.adam_beta1, t.adam_beta2, t.adam_epsilon
        step = tf.cast(self.step, tf.float32) + 1.0
        m.assign(b1 * m + (1 - b1) * grad)
        v.assign(b2 * v + (1 - b2) * grad * grad)
        update = (m / (1 - b1 ** step)) / (tf.sqrt(v / (1 - b2 ** step)) + eps)
        var.assign_sub(lr * (update + decay * var))

    def save_checkpoint(self, path: Path) -> None:
        """Parameters, optimiser slots and the step, with the configuration's record."""
        arrays = {f"param/{n}": v.numpy() for n, v in self.model.params.items()}
        arrays.update({f"slot/{n}": v.numpy() for n, v in self.slots.items()})
        save_weights(path, arrays, {"step": int(self.step.numpy()), "kind": "checkpoint",
                                    **weights_record(self.config, "training")})

    def restore_checkpoint(self, path: Path) -> int:
        """Load a checkpoint written by `save_checkpoint`; returns its step."""
        arrays, meta = read_weights(path)
        if meta.get("kind") != "checkpoint":
            raise WeightsError(f"{path}: not a training checkpoint")
        params = {name[len("param/"):]: value for name, value in arrays.items() if name.startswith("param/")}
        problem = first_mismatch(params, {name: tuple(var.shape) for name, var in self.model.params.items()})
        if problem:
            raise WeightsError(f"{path} ({describe_record(meta)}) does not fit {config_name(self.config)}: {problem}")
        for name, var in self.model.params.items():
            var.assign(params[name])
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
        loaded, meta = read_weights(init)
        fitting = {n: v for n, v in loaded.items() if n in params and v.shape == params[n].shape}
        if len(fitting) < len(params) // 2:
            raise WeightsError(f"{init} ({describe_record(meta)}) does not fit {config_name(config)}: only "
                               f"{len(fitting)} of {len(params)} parameters fit")
        fresh = sorted(set(params) - set(fitting))
        if fresh:
            log.warning("%s: %d parameters start afresh (%s)", init, len(fresh), ", ".join(fresh[:3]))
        params.update(fitting)
    return params


def train_model(config: ModelConfig, data_spec: str, out_dir: Path, resume: bool = False, init: str | None = None,
                tensorboard: bool = False, progress: bool = True) -> Path:
    """Train and write out_dir/model.npz (and checkpoints, config.yaml). Returns the weights path."""
    from tqdm import tqdm

    require_trainable(config)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    data = CocoDataset(data_spec, mask_size=mini_mask_size(config))
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
    elif resume:
        print(f"resuming from {checkpoint} at step {start} of {config.train.steps}", flush=True)
    writer = tf.summary.create_file_writer(str(out_dir / "tensorboard")) if tensorboard else None
    batches = iter(training_batches(data, config, config.train.seed, start))
    bar = tqdm(total=config.train.steps, initial=start, disable=not progress, unit="step", dynamic_ncols=True)
    began = time.time()
    try:
        for step in range(start, config.train.steps):
            batch = next(batches)
            parts = trainer.train_step(batch["image"], batch["boxes"], batch["class_ids"], batch["masks"])
            values = {k: float(v) for k, v in parts.items()}
            if not math.isfinite(values["total"]):
                raise FloatingPointError(f"step {step}: the loss is not finite ({values})")
            bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()
                             if k in ("total", "rpn_objectness", "box_classifier", "mask")})
            bar.update(1)
            if writer is not None:
                with writer.as_default(step=step):
                    for k, v in values.items():
                        tf.summary.scalar(k, v)
            if (step + 1) % config.train.checkpoint_every == 0 or step + 1 == config.train.steps:
                trainer.save_checkpoint(checkpoint)
    except KeyboardInterrupt:
        # A compiled step is atomic for Python: the step counter always matches the parameters.
        trainer.save_checkpoint(checkpoint)
        bar.close()
        raise TrainingInterrupted(f"{checkpoint}: interrupted at step {int(trainer.step.numpy())} of "
                                  f"{config.train.steps}; run again with --resume to continue") from None
    bar.close()
    path = model.save(out_dir / FINAL, made_by="training")
    log.info("trained %d steps in %.0f s", config.train.steps - start, time.time() - began)
    return path

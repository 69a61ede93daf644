"""The training input: examples of a COCO data set through the one augmentation path
(`models.data.augment`), placed on one fixed canvas and batched, so the training step is compiled
once.

Every example is resized to a short side of min_size x a factor drawn from train.scale_jitter
(the long side at most max_size x the jitter's top), flipped left-right with probability 1/2
(train.flip), and put in the top-left corner of the canvas, the padded size of the largest such
resize. Batch k holds examples kB..kB+B-1 of the data set's training stream (B = batch size), and
example k depends only on the seed and k, so `training_batches(..., start=k)` continues a run
interrupted after step k exactly.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from ..config import ModelConfig
from ..data.augment import Augmentation
from ..data.coco import MASK_SIZE, CocoDataset
from ..image_size import padded_size


def canvas_size(config: ModelConfig) -> tuple[int, int]:
    """The fixed padded training canvas: the largest jittered resize of a max_size x min_size frame."""
    high = config.train.scale_jitter[1]
    return padded_size(int(config.input.min_size * high), int(config.input.max_size * high),
                       config.input.size_divisible)


def mini_mask_size(config: ModelConfig) -> int:
    """Side of the ground-truth mini masks: train.mini_mask_size, by default twice the predicted
    mask's side and at least 56, so that the mask targets stay sharp."""
    return config.train.mini_mask_size or max(MASK_SIZE, 2 * config.mask_size)


def training_augmentation(config: ModelConfig) -> Augmentation:
    """The augmentation train.scale_jitter and train.flip ask for, on the config's input size."""
    low, high = config.train.scale_jitter
    return Augmentation(flip=config.train.flip,
                        short_side=(config.input.min_size * low, config.input.min_size * high),
                        max_size=config.input.max_size * high)


def on_canvas(example: dict, config: ModelConfig) -> dict:
    """An augmented example -> fixed-shape arrays on the training canvas: image uint8 (Hc, Wc, 3)
    (zeros beyond the example), boxes (G, 4) float32, class_ids (G,) int32 (0 pads), masks
    (G, m, m) uint8 mini masks; G = train.max_instances, the largest instances kept."""
    image, boxes, masks = example["image"], example["boxes"], example["masks"]
    canvas = np.zeros(canvas_size(config) + (3,), np.uint8)
    canvas[:image.shape[0], :image.shape[1]] = image
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


def training_batches(data: CocoDataset, config: ModelConfig, seed: int, start: int = 0) -> tf.data.Dataset:
    """An endless tf.data pipeline of batches on the canvas, from batch `start` on (see the module
    docstring): image (B, Hc, Wc, 3) uint8, boxes (B, G, 4), class_ids (B, G), masks (B, G, m, m)."""
    g, m, b = config.train.max_instances, data.mask_size, config.train.batch_size
    ch, cw = canvas_size(config)
    augmentation = training_augmentation(config)

    def generate():
        for example in data.examples(training=True, seed=seed, augmentation=augmentation, start=start * b):
            yield on_canvas(example, config)

    signature = {"image": tf.TensorSpec((ch, cw, 3), tf.uint8), "boxes": tf.TensorSpec((g, 4), tf.float32),
                 "class_ids": tf.TensorSpec((g,), tf.int32), "masks": tf.TensorSpec((g, m, m), tf.uint8)}
    return (tf.data.Dataset.from_generator(generate, output_signature=signature)
            .batch(b, drop_remainder=True).prefetch(2))

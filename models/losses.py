"""Mask R-CNN's losses: L = L_rpn_objectness + L_rpn_box + L_cls + L_box + L_mask.

Box losses are smooth L1 (beta 1/9) summed over positives and divided by the number of
sampled boxes, as in torchvision. The mask loss is a per-pixel sigmoid cross-entropy on the
channel of the ground-truth class only: classes do not compete for a pixel (the seed's point).
"""
from __future__ import annotations

import tensorflow as tf

SMOOTH_L1_BETA = 1.0 / 9


def smooth_l1(diff: tf.Tensor, beta: float = SMOOTH_L1_BETA) -> tf.Tensor:
    """Elementwise: 0.5 x^2 / beta where |x| < beta, else |x| - 0.5 beta."""
    a = tf.abs(diff)
    return tf.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def objectness_loss(logits: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> tf.Tensor:
    """logits (B, N), positive/negative sample masks (B, N) -> mean binary cross-entropy over the samples."""
    sampled = tf.cast(tf.logical_or(positive, negative), tf.float32)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(positive, tf.float32), logits=logits)
    return tf.reduce_sum(bce * sampled) / tf.maximum(tf.reduce_sum(sampled), 1.0)


def box_loss(deltas: tf.Tensor, target_deltas: tf.Tensor, positive: tf.Tensor, num_sampled: tf.Tensor) -> tf.Tensor:
    """deltas, target_deltas (..., 4), positive (...) -> smooth L1 over positives / num_sampled."""
    per_box = tf.reduce_sum(smooth_l1(deltas - target_deltas), axis=-1)
    return tf.reduce_sum(per_box * tf.cast(positive, tf.float32)) / tf.maximum(tf.cast(num_sampled, tf.float32), 1.0)


def classification_loss(logits: tf.Tensor, class_ids: tf.Tensor, sampled: tf.Tensor) -> tf.Tensor:
    """logits (R, K), class_ids (R,) (0 = background), sampled (R,) -> mean softmax cross-entropy."""
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=class_ids, logits=logits)
    weight = tf.cast(sampled, tf.float32)
    return tf.reduce_sum(ce * weight) / tf.maximum(tf.reduce_sum(weight), 1.0)


def mask_loss(mask_logits: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """mask_logits (R, M, M) of each RoI's ground-truth class, targets (R, M, M) in [0, 1] -> mean BCE
    (0 when there is no positive RoI)."""
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=mask_logits)
    return tf.math.divide_no_nan(tf.reduce_sum(bce), tf.cast(tf.size(bce), tf.float32))

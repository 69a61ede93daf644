"""What the RPN and the RoI heads both train with: matching boxes (anchors or proposals) to the
ground truth by IoU, sampling a balanced set of positives and negatives (Mask R-CNN's rules), and
the smooth L1 box-regression loss.

Ground truth is padded to a fixed count G per image; `gt_valid` (B, G) marks the real boxes.
Each stage's own targets and losses live beside it: `rpn.py` (anchor matching, objectness and
box losses), `roi_heads.py` (proposal sampling, box and mask losses).
"""
from __future__ import annotations

import tensorflow as tf

from . import box_coding

POSITIVE, NEGATIVE, IGNORED = 1, 0, -1


def batched_iou(gt_boxes: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
    """gt_boxes (B, G, 4), boxes (B, N, 4) or (N, 4) -> IoU (B, G, N)."""
    if boxes.shape.rank == 2:
        return tf.map_fn(lambda g: box_coding.pairwise_iou(g, boxes), gt_boxes)
    return tf.map_fn(lambda args: box_coding.pairwise_iou(*args), (gt_boxes, boxes),
                     fn_output_signature=tf.float32)


def match(iou: tf.Tensor, gt_valid: tf.Tensor, fg_threshold: float, bg_threshold: float,
          allow_low_quality: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """iou (B, G, N), gt_valid (B, G) -> matched ground truth (B, N) int32 and label (B, N) int32:
    POSITIVE when the best IoU >= fg_threshold, NEGATIVE below bg_threshold, IGNORED between.

    With allow_low_quality every ground truth also claims the boxes it overlaps most (ties
    included), so that no object is left without a positive anchor.
    """
    iou = tf.where(gt_valid[:, :, None], iou, -1.0)
    best = tf.reduce_max(iou, axis=1)
    matched = tf.argmax(iou, axis=1, output_type=tf.int32)
    label = tf.where(best >= fg_threshold, POSITIVE, tf.where(best < bg_threshold, NEGATIVE, IGNORED))
    if allow_low_quality:
        best_per_gt = tf.reduce_max(iou, axis=2, keepdims=True)
        is_best = tf.logical_and(tf.equal(iou, best_per_gt), best_per_gt > 0.0)
        label = tf.where(tf.reduce_any(is_best, axis=1), POSITIVE, label)
    return matched, label


def sample(label: tf.Tensor, num: int, positive_fraction: float, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """label (B, N) -> positive and negative sample masks (B, N) bool: at most
    num * positive_fraction random positives, negatives filling the rest up to num."""
    max_pos = int(num * positive_fraction)
    num_pos = tf.minimum(tf.reduce_sum(tf.cast(label == POSITIVE, tf.int32), axis=1), max_pos)
    num_neg = tf.minimum(tf.reduce_sum(tf.cast(label == NEGATIVE, tf.int32), axis=1), num - num_pos)
    pos = _random_subset(label == POSITIVE, num_pos, max_pos, seed)
    neg = _random_subset(label == NEGATIVE, num_neg, num, seed + 1)
    return pos, neg


def _random_subset(candidates: tf.Tensor, count: tf.Tensor, max_count: int, seed: tf.Tensor) -> tf.Tensor:
    """candidates (B, N) bool, count (B,) -> (B, N) bool with `count` random candidates per row."""
    noise = tf.random.stateless_uniform(tf.shape(candidates), seed=tf.stack([seed, 7]))
    k = min(max_count, int(candidates.shape[1]))
    _, idx = tf.math.top_k(tf.where(candidates, noise, -1.0), k=k)
    chosen = tf.range(k)[None, :] < count[:, None]
    batch = tf.broadcast_to(tf.range(tf.shape(idx)[0])[:, None], tf.shape(idx))
    scatter_at = tf.stack([tf.boolean_mask(batch, chosen), tf.boolean_mask(idx, chosen)], axis=1)
    return tf.scatter_nd(scatter_at, tf.ones(tf.shape(scatter_at)[0], tf.int32), tf.shape(candidates)) > 0


def smooth_l1(diff: tf.Tensor, beta: float) -> tf.Tensor:
    """Elementwise, any shape: 0.5 x^2 / beta where |x| < beta, else |x| - 0.5 beta."""
    a = tf.abs(diff)
    return tf.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def box_regression_loss(deltas: tf.Tensor, target_deltas: tf.Tensor, positive: tf.Tensor, num_sampled: tf.Tensor,
                        beta: float) -> tf.Tensor:
    """deltas, target_deltas (..., 4), positive (...) bool, num_sampled () -> scalar: smooth L1
    summed over the positives' four deltas, divided by the number of sampled boxes (torchvision's
    normalisation)."""
    per_box = tf.reduce_sum(smooth_l1(deltas - target_deltas, beta), axis=-1)
    return tf.reduce_sum(per_box * tf.cast(positive, tf.float32)) / tf.maximum(tf.cast(num_sampled, tf.float32), 1.0)

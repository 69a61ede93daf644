"""Greedy non-maximum suppression over many independent groups at once (per image and level in
the RPN, per image and class in the box head).

A box is suppressed by a higher-scoring box of its group whose IoU with it exceeds the
threshold (strictly, as torchvision). Each group runs TensorFlow's NMS kernel, which stops
once `max_output` boxes are kept; grouping by index rather than by shifting coordinates keeps
the IoU in full float32 precision.
"""
from __future__ import annotations

import tensorflow as tf


def grouped_nms(boxes: tf.Tensor, scores: tf.Tensor, max_output: int, iou_threshold: float) -> tuple[tf.Tensor, tf.Tensor]:
    """boxes (G, N, 4), scores (G, N) with negative scores meaning "not a candidate" ->
    kept indices (G, max_output) int32 sorted by score, and their validity (G, max_output) bool
    (false where a group keeps fewer than max_output boxes; the index is 0 there)."""

    def one_group(args):
        group_boxes, group_scores = args
        keep = tf.image.non_max_suppression(group_boxes, group_scores, max_output, iou_threshold,
                                            score_threshold=-0.5)
        count = tf.shape(keep)[0]
        return tf.reshape(tf.pad(keep, [[0, max_output - count]]), [max_output]), tf.range(max_output) < count

    return tf.map_fn(one_group, (boxes, scores), fn_output_signature=(tf.int32, tf.bool),
                     parallel_iterations=16)

"""Boxes are (x1, y1, x2, y2) in pixels, x2 > x1 for a non-empty box, width = x2 - x1 (no +1).

Box deltas (dx, dy, dw, dh) are encoded relative to a reference box and divided by per-coordinate
weights (torchvision's BoxCoder): RPN (1, 1, 1, 1), box head (10, 10, 5, 5).

`box_coding: seed` decodes as the seed's apply_box_deltas_graph does (`decode_seed`); the seed's
own delta order (dy, dx, dh, dw) is permuted to this one when its weights are converted.
"""
from __future__ import annotations

import tensorflow as tf


def decode(deltas: tf.Tensor, boxes: tf.Tensor, weights, clip: float) -> tf.Tensor:
    """deltas (..., 4), reference boxes broadcastable to (..., 4) -> decoded boxes (..., 4).

    dw and dh are clamped at `clip` before the exponential.
    """
    wx, wy, ww, wh = [float(w) for w in weights]
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    ctr_x = boxes[..., 0] + 0.5 * widths
    ctr_y = boxes[..., 1] + 0.5 * heights
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = tf.minimum(deltas[..., 2] / ww, clip)
    dh = tf.minimum(deltas[..., 3] / wh, clip)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    half_w = 0.5 * (tf.exp(dw) * widths)
    half_h = 0.5 * (tf.exp(dh) * heights)
    return tf.stack([pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h], axis=-1)


def decode_seed(deltas: tf.Tensor, boxes: tf.Tensor, weights) -> tf.Tensor:
    """The seed's apply_box_deltas_graph: deltas (..., 4) times 1 / weights (float32: the seed's
    RPN_BBOX_STD_DEV or BBOX_STD_DEV, 0.1 as 1 / 10), reference boxes broadcastable to (..., 4) ->
    decoded boxes (..., 4): the centre moved, the size scaled by exp (no clamp), x1 = centre - size / 2,
    x2 = x1 + size."""
    scale = tf.constant([1.0 / float(w) for w in weights], deltas.dtype)
    deltas = deltas * scale
    height = boxes[..., 3] - boxes[..., 1]
    width = boxes[..., 2] - boxes[..., 0]
    center_y = boxes[..., 1] + 0.5 * height + deltas[..., 1] * height
    center_x = boxes[..., 0] + 0.5 * width + deltas[..., 0] * width
    height = height * tf.exp(deltas[..., 3])
    width = width * tf.exp(deltas[..., 2])
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    return tf.stack([x1, y1, x1 + width, y1 + height], axis=-1)


def decode_with(coding: str, deltas: tf.Tensor, boxes: tf.Tensor, weights, clip: float) -> tf.Tensor:
    """`decode` (coding "torchvision") or `decode_seed` ("seed"; `clip` unused)."""
    return decode_seed(deltas, boxes, weights) if coding == "seed" else decode(deltas, boxes, weights, clip)


def clip_to_window(boxes: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    """boxes (..., 4) with each coordinate clamped into window (..., 4) x1 y1 x2 y2 (broadcast), as the
    seed's clip_boxes_graph: x in [x1, x2], y in [y1, y2]."""
    lo = tf.concat([window[..., :2], window[..., :2]], axis=-1)
    hi = tf.concat([window[..., 2:], window[..., 2:]], axis=-1)
    return tf.maximum(tf.minimum(boxes, hi), lo)


def encode(targets: tf.Tensor, boxes: tf.Tensor, weights) -> tf.Tensor:
    """The deltas that `decode` turns `boxes` (..., 4) into `targets` (..., 4)."""
    wx, wy, ww, wh = [float(w) for w in weights]
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    ctr_x = boxes[..., 0] + 0.5 * widths
    ctr_y = boxes[..., 1] + 0.5 * heights
    t_widths = targets[..., 2] - targets[..., 0]
    t_heights = targets[..., 3] - targets[..., 1]
    t_ctr_x = targets[..., 0] + 0.5 * t_widths
    t_ctr_y = targets[..., 1] + 0.5 * t_heights
    return tf.stack([
        wx * (t_ctr_x - ctr_x) / widths,
        wy * (t_ctr_y - ctr_y) / heights,
        ww * tf.math.log(t_widths / widths),
        wh * tf.math.log(t_heights / heights),
    ], axis=-1)


def clip_to_image(boxes: tf.Tensor, height, width) -> tf.Tensor:
    """Clamp x to [0, width] and y to [0, height]; boxes (..., 4)."""
    height = tf.cast(height, boxes.dtype)
    width = tf.cast(width, boxes.dtype)
    x1 = tf.clip_by_value(boxes[..., 0], 0.0, width)
    y1 = tf.clip_by_value(boxes[..., 1], 0.0, height)
    x2 = tf.clip_by_value(boxes[..., 2], 0.0, width)
    y2 = tf.clip_by_value(boxes[..., 3], 0.0, height)
    return tf.stack([x1, y1, x2, y2], axis=-1)


def area(boxes: tf.Tensor) -> tf.Tensor:
    """(..., 4) -> (...)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def is_large_enough(boxes: tf.Tensor, min_size: float) -> tf.Tensor:
    """(..., 4) -> (...) bool: width and height both at least min_size."""
    return tf.logical_and(boxes[..., 2] - boxes[..., 0] >= min_size, boxes[..., 3] - boxes[..., 1] >= min_size)


def pairwise_iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """a (N, 4), b (M, 4) -> IoU (N, M); 0 where the union is empty."""
    x1 = tf.maximum(a[:, None, 0], b[None, :, 0])
    y1 = tf.maximum(a[:, None, 1], b[None, :, 1])
    x2 = tf.minimum(a[:, None, 2], b[None, :, 2])
    y2 = tf.minimum(a[:, None, 3], b[None, :, 3])
    inter = tf.maximum(x2 - x1, 0.0) * tf.maximum(y2 - y1, 0.0)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return tf.math.divide_no_nan(inter, union)

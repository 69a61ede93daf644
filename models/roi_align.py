"""Batched multi-level RoIAlign.

The RoIs of every frame of a batch are pooled together: each RoI is assigned a pyramid level,
the RoIs are partitioned by level, and each level is sampled by ONE `tf.image.crop_and_resize`
whose `box_indices` name the frame; the results are stitched back into RoI order. There is no
loop over frames or RoIs.

Semantics (torchvision's `roi_align`, Mask R-CNN's RoIAlign): no rounding anywhere; each output
bin averages `sampling_ratio`^2 bilinear samples at regular positions inside the bin; a sample
within one cell outside the feature map takes the border value, further out it is zero; with
`aligned=False` an RoI is at least one cell wide and high. The border rule is obtained by
padding each feature map with a copy of its edge (`pad_edges`, once per graph call, shared by
the box and the mask pooling) and sampling in the padded frame.
"""
from __future__ import annotations

import math

import tensorflow as tf

from . import box_coding


def assign_levels(boxes: tf.Tensor, canonical_scale: float, canonical_level: int, min_level: int, max_level: int,
                  eps: float = 1e-6) -> tf.Tensor:
    """boxes (R, 4) -> level (R,) int32 in [min_level, max_level]:
    floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps), clamped."""
    size = tf.sqrt(box_coding.area(boxes))
    level = tf.floor(canonical_level + tf.math.log(size / canonical_scale) / math.log(2.0) + eps)
    return tf.cast(tf.clip_by_value(level, min_level, max_level), tf.int32)


def pad_edges(features: list[tf.Tensor]) -> list[tf.Tensor]:
    """[(B, H, W, C)] -> [(B, H + 2, W + 2, C)]: each map framed by a copy of its border cells."""
    return [tf.pad(f, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC") for f in features]


def crop_level(padded: tf.Tensor, boxes: tf.Tensor, box_indices: tf.Tensor, scale: float, output_size: int,
               sampling_ratio: int, aligned: bool) -> tf.Tensor:
    """RoIAlign on one feature map.

    padded (B, H + 2, W + 2, C) from `pad_edges`; boxes (R, 4) x1 y1 x2 y2 in image pixels;
    box_indices (R,) int32 frame of each box; scale = feature size / image size.
    Returns (R, output_size, output_size, C).
    """
    height = (padded.shape[1] if padded.shape[1] is not None else tf.shape(padded)[1]) - 2
    width = (padded.shape[2] if padded.shape[2] is not None else tf.shape(padded)[2]) - 2
    offset = 0.5 if aligned else 0.0
    x1 = boxes[:, 0] * scale - offset
    y1 = boxes[:, 1] * scale - offset
    roi_w = boxes[:, 2] * scale - offset - x1
    roi_h = boxes[:, 3] * scale - offset - y1
    if not aligned:
        roi_w = tf.maximum(roi_w, 1.0)
        roi_h = tf.maximum(roi_h, 1.0)
    n = output_size * sampling_ratio
    step_x = roi_w / n
    step_y = roi_h / n
    # First and last sample, shifted by the one-cell padding, normalised as crop_and_resize wants.
    # The padded map is (H + 2, W + 2): its normalised coordinate 1 is padded index H + 1.
    h1 = tf.cast(height + 1, boxes.dtype)
    w1 = tf.cast(width + 1, boxes.dtype)
    crop_boxes = tf.stack([
        (y1 + 0.5 * step_y + 1.0) / h1,
        (x1 + 0.5 * step_x + 1.0) / w1,
        (y1 + (n - 0.5) * step_y + 1.0) / h1,
        (x1 + (n - 0.5) * step_x + 1.0) / w1,
    ], axis=1)
    samples = tf.image.crop_and_resize(padded, crop_boxes, box_indices, [n, n], method="bilinear",
                                       extrapolation_value=0.0)
    if sampling_ratio == 1:
        return samples
    return tf.nn.avg_pool2d(samples, sampling_ratio, sampling_ratio, "VALID")


def multilevel_roi_align(padded: list[tf.Tensor], boxes: tf.Tensor, box_indices: tf.Tensor, image_hw: tuple,
                         output_size: int, sampling_ratio: int, aligned: bool, canonical_scale: float,
                         canonical_level: int, eps: float = 1e-6, min_level: int = 2) -> tf.Tensor:
    """padded [P_min .. P_max] from `pad_edges`, each (B, H_l + 2, W_l + 2, C); boxes (R, 4) in image pixels;
    box_indices (R,) -> (R, output_size, output_size, C).

    The scale of each level is the power of two nearest to feature size / image size, as
    torchvision infers it.
    """
    max_level = min_level + len(padded) - 1
    levels = assign_levels(boxes, canonical_scale, canonical_level, min_level, max_level, eps) - min_level
    positions = tf.range(tf.shape(boxes)[0])
    box_parts = tf.dynamic_partition(boxes, levels, len(padded))
    index_parts = tf.dynamic_partition(tf.cast(box_indices, tf.int32), levels, len(padded))
    position_parts = tf.dynamic_partition(positions, levels, len(padded))
    pooled = []
    for level, feature in enumerate(padded):
        scale = 2.0 ** round(math.log2((feature.shape[1] - 2) / image_hw[0]))
        pooled.append(crop_level(feature, box_parts[level], index_parts[level], scale, output_size,
                                 sampling_ratio, aligned))
    return tf.dynamic_stitch(position_parts, pooled)

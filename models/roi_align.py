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

`roi_align.method: seed` is the seed's PyramidROIAlign (`multilevel_roi_align_seed`): its level rule,
and boxes in its normalised frame cropped by `crop_and_resize` directly on the unpadded maps.
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


def pool_by_level(features: list[tf.Tensor], boxes: tf.Tensor, box_indices: tf.Tensor, levels: tf.Tensor,
                  crop) -> tf.Tensor:
    """Partition the RoIs by level (0-based, (R,) int32), pool each level's with ONE call
    crop(level, feature (B, H, W, C), boxes (R_l, 4), box_indices (R_l,)) -> (R_l, S, S, C), and stitch
    the results back into RoI order -> (R, S, S, C)."""
    positions = tf.range(tf.shape(boxes)[0])
    box_parts = tf.dynamic_partition(boxes, levels, len(features))
    index_parts = tf.dynamic_partition(tf.cast(box_indices, tf.int32), levels, len(features))
    position_parts = tf.dynamic_partition(positions, levels, len(features))
    pooled = [crop(level, feature, box_parts[level], index_parts[level]) for level, feature in enumerate(features)]
    return tf.dynamic_stitch(position_parts, pooled)


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

    def crop(level, feature, level_boxes, level_indices):
        scale = 2.0 ** round(math.log2((feature.shape[1] - 2) / image_hw[0]))
        return crop_level(feature, level_boxes, level_indices, scale, output_size, sampling_ratio, aligned)
    return pool_by_level(padded, boxes, box_indices, levels, crop)


def assign_levels_seed(boxes: tf.Tensor, image_area: float, canonical_scale: float, canonical_level: int,
                       min_level: int, max_level: int) -> tf.Tensor:
    """boxes (R, 4) normalised -> level (R,) int32, as the seed's PyramidROIAlign:
    clamp(canonical_level + round(log2(sqrt(h w) / (canonical_scale / sqrt(image_area)))), min, max), rounding
    half to even; a zero box (the RPN's padding) takes min_level."""
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    area = tf.constant(image_area, tf.float32)
    level = tf.math.log(tf.sqrt(h * w) / (canonical_scale / tf.sqrt(area))) / tf.math.log(2.0)
    level = tf.where(h * w > 0, tf.round(level), -1e9)   # the seed casts log(0) = -inf to int32: the minimum level
    return tf.cast(tf.clip_by_value(canonical_level + level, min_level, max_level), tf.int32)


def multilevel_roi_align_seed(features: list[tf.Tensor], boxes: tf.Tensor, box_indices: tf.Tensor,
                              image_area: float, output_size: int, canonical_scale: float, canonical_level: int,
                              min_level: int = 2) -> tf.Tensor:
    """The seed's PyramidROIAlign: features [P_min .. P_max] unpadded (B, H_l, W_l, C), boxes (R, 4) x1 y1 x2 y2
    in the seed's normalised frame of the square, box_indices (R,), image_area the square's pixels ->
    (R, output_size, output_size, C).

    Each level is one `crop_and_resize` of its RoIs' normalised boxes to output_size x output_size: one
    bilinear sample per cell, the first and last on the box's edges (y1 (H_l - 1) ... y2 (H_l - 1)), zero
    outside the map.
    """
    levels = assign_levels_seed(boxes, image_area, canonical_scale, canonical_level, min_level,
                                min_level + len(features) - 1) - min_level

    def crop(level, feature, level_boxes, level_indices):
        yx = tf.stack([level_boxes[:, 1], level_boxes[:, 0], level_boxes[:, 3], level_boxes[:, 2]], axis=1)
        return tf.image.crop_and_resize(feature, yx, level_indices, [output_size, output_size], method="bilinear")
    return pool_by_level(features, boxes, box_indices, levels, crop)

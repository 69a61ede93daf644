"""RoI heads: the box head (two FC layers, class scores and per-class box refinements), the
per-class NMS that turns them into detections, and the mask head (3x3 convs, a 2x transposed
conv (or several, for larger masks), and a per-class 1x1 conv whose channel of the detected class is the mask).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from . import box_coding
from .config import BoxHeadConfig
from .layers import Params, conv2d, conv_shapes, dense, dense_shapes
from .nms import grouped_nms


def box_head_shapes(channels: int, pool: int, fc_dim: int, num_classes: int) -> dict[str, tuple]:
    shapes = dense_shapes("box_head/fc6", channels * pool * pool, fc_dim)
    shapes.update(dense_shapes("box_head/fc7", fc_dim, fc_dim))
    shapes.update(dense_shapes("box_head/cls_score", fc_dim, num_classes))
    shapes.update(dense_shapes("box_head/bbox_pred", fc_dim, num_classes * 4))
    return shapes


def deconv_name(k: int) -> str:
    """The k-th (0-based) 2x transposed conv of the mask head: "mask_head/deconv", then deconv2, ..."""
    return "mask_head/deconv" if k == 0 else f"mask_head/deconv{k + 1}"


def mask_head_shapes(channels: int, conv_dims: list[int], num_classes: int, deconvs: int = 1) -> dict[str, tuple]:
    shapes = {}
    cin = channels
    for i, dim in enumerate(conv_dims):
        shapes.update(conv_shapes(f"mask_head/fcn{i + 1}", 3, cin, dim))
        cin = dim
    for k in range(deconvs):
        # Transposed conv kernel in TensorFlow's layout (kh, kw, out, in).
        shapes[deconv_name(k) + "/kernel"] = (2, 2, cin, cin)
        shapes[deconv_name(k) + "/bias"] = (cin,)
    shapes.update(conv_shapes("mask_head/logits", 1, cin, num_classes))
    return shapes


def nearest_upsampling_kernel(channels: int) -> np.ndarray:
    """A 2x2 stride-2 transposed-conv kernel (2, 2, C, C) that copies every input pixel to its 2x2
    block: the starting point of extra deconvs, so a head trained with fewer starts where it was."""
    return np.broadcast_to(np.eye(channels, dtype=np.float32), (2, 2, channels, channels)).copy()


def box_head(params: Params, pooled: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """pooled (R, S, S, C) -> class logits (R, K) and box deltas (R, K, 4)."""
    x = tf.reshape(pooled, [tf.shape(pooled)[0], -1])
    x = dense(x, params, "box_head/fc6", relu=True)
    x = dense(x, params, "box_head/fc7", relu=True)
    logits = dense(x, params, "box_head/cls_score")
    deltas = dense(x, params, "box_head/bbox_pred")
    return logits, tf.reshape(deltas, [tf.shape(x)[0], -1, 4])


def detect(logits: tf.Tensor, deltas: tf.Tensor, proposals: tf.Tensor, proposal_valid: tf.Tensor,
           image_hw: tuple[int, int], cfg: BoxHeadConfig, box_xform_clip: float):
    """Per-class decoding, score filtering and per-class NMS.

    logits (B, P, K), deltas (B, P, K, 4), proposals (B, P, 4), proposal_valid (B, P) ->
    boxes (B, D, 4), scores (B, D), class ids (B, D) int32 in 1..K-1, valid (B, D) bool;
    D = detections_per_image, sorted by score.
    """
    scores = tf.nn.softmax(logits, axis=-1)[:, :, 1:]
    boxes = box_coding.decode(deltas[:, :, 1:, :], proposals[:, :, None, :], cfg.box_weights, box_xform_clip)
    boxes = box_coding.clip_to_image(boxes, image_hw[0], image_hw[1])
    keep = tf.logical_and(proposal_valid[:, :, None], box_coding.is_large_enough(boxes, cfg.min_size))
    keep = tf.logical_and(keep, scores > cfg.score_threshold)
    scores = tf.where(keep, scores, -1.0)
    # One NMS group per (frame, class): (B, P, K-1, ...) -> (B * (K-1), P, ...).
    num_proposals, num_fg = scores.shape[1], scores.shape[2]
    d = min(cfg.detections_per_image, num_proposals)
    group_boxes = tf.reshape(tf.transpose(boxes, [0, 2, 1, 3]), [-1, num_proposals, 4])
    group_scores = tf.reshape(tf.transpose(scores, [0, 2, 1]), [-1, num_proposals])
    keep, kept = grouped_nms(group_boxes, group_scores, d, cfg.nms_threshold)
    kept_scores = tf.where(kept, tf.gather(group_scores, keep, batch_dims=1), -1.0)
    kept_boxes = tf.gather(group_boxes, keep, batch_dims=1)
    # The best d of every class's survivors, per frame.
    kept_scores = tf.reshape(kept_scores, [-1, num_fg * d])
    kept_boxes = tf.reshape(kept_boxes, [-1, num_fg * d, 4])
    top_scores, top = tf.math.top_k(kept_scores, k=d, sorted=True)
    class_ids = top // d + 1
    return tf.gather(kept_boxes, top, batch_dims=1), top_scores, class_ids, top_scores >= 0.0


def mask_head(params: Params, pooled: tf.Tensor, class_ids: tf.Tensor, num_convs: int, num_deconvs: int = 1) -> tf.Tensor:
    """pooled (R, S, S, C), class_ids (R,) -> mask logits (R, M, M) of each RoI's own class,
    M = S * 2**num_deconvs.

    Only the channel of the RoI's class is computed: the 1x1 conv's kernel column of that class
    is gathered per RoI (the same values as computing all classes and selecting one).
    """
    x = pooled
    for i in range(num_convs):
        x = conv2d(x, params, f"mask_head/fcn{i + 1}", relu=True)
    for k in range(num_deconvs):
        kernel = tf.cast(params[deconv_name(k) + "/kernel"], x.dtype)
        r, s = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.nn.conv2d_transpose(x, kernel, [r, 2 * s, 2 * s, kernel.shape[2]], strides=2, padding="VALID")
        x = tf.nn.relu(tf.nn.bias_add(x, tf.cast(params[deconv_name(k) + "/bias"], x.dtype)))
    w = tf.cast(params["mask_head/logits/kernel"], x.dtype)[0, 0]          # (C, K)
    w_roi = tf.transpose(tf.gather(w, class_ids, axis=1))                # (R, C)
    b_roi = tf.gather(tf.cast(params["mask_head/logits/bias"], x.dtype), class_ids)
    return tf.einsum("rhwc,rc->rhw", x, w_roi) + b_roi[:, None, None]

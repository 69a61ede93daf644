"""Region proposal network: a shared 3x3 conv head over P2..P6, the selection of proposals
(top-k per level by objectness, decode, clip, drop tiny boxes, NMS within each level, best
`post_nms_top_n` per image; or the seed's ProposalLayer, `select_proposals_seed`), and what
trains it: anchors matched to the ground truth, a balanced sample of them, the objectness and box
losses.

All tensors keep a static batch dimension; images of one call share one size (the model groups
frames by size), so the clipping bounds are Python numbers.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from . import box_coding
from .config import RPNConfig
from .layers import Params, conv2d, conv_shapes
from .matching import batched_iou, box_regression_loss, match, sample
from .nms import grouped_nms


def rpn_conv_name(i: int) -> str:
    """The i-th (0-based) 3x3 conv of the RPN head: "rpn/conv", then rpn/conv2, ..."""
    return "rpn/conv" if i == 0 else f"rpn/conv{i + 1}"


def rpn_shapes(channels: int, num_anchors: int, depth: int = 1, hidden: int | None = None,
               logits_per_anchor: int = 1) -> dict[str, tuple]:
    """`depth` 3x3 convs of `hidden` channels (default: `channels`), then the 1x1 predictors."""
    hidden = hidden or channels
    shapes = {}
    for i in range(depth):
        shapes.update(conv_shapes(rpn_conv_name(i), 3, channels if i == 0 else hidden, hidden))
    shapes.update(conv_shapes("rpn/objectness", 1, hidden, logits_per_anchor * num_anchors))
    shapes.update(conv_shapes("rpn/deltas", 1, hidden, 4 * num_anchors))
    return shapes


def rpn_head(params: Params, features: list[tf.Tensor], depth: int = 1, logits_per_anchor: int = 1
             ) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
    """[P_l (B, H_l, W_l, C)] -> objectness logits [(B, H_l*W_l*A)] (or [(B, H_l*W_l*A, 2)] with two
    logits per anchor, background then object) and deltas [(B, H_l*W_l*A, 4)].

    The flattening order (location-major, then anchor) matches the anchors'. The objectness and
    delta 1x1 convs run as one conv of their concatenated kernels (one pass over each level's
    features instead of two; the same values: each output channel is its own dot product).
    """
    objectness_channels = params["rpn/objectness/kernel"].shape[-1]     # A, or 2A with two logits per anchor
    outputs = {"rpn/outputs/kernel": tf.concat([params["rpn/objectness/kernel"], params["rpn/deltas/kernel"]], -1),
               "rpn/outputs/bias": tf.concat([params["rpn/objectness/bias"], params["rpn/deltas/bias"]], 0)}
    logits, deltas = [], []
    for x in features:
        t = x
        for i in range(depth):
            t = conv2d(t, params, rpn_conv_name(i), relu=True)
        o, d = tf.split(conv2d(t, outputs, "rpn/outputs"), [objectness_channels, -1], axis=-1)
        batch = tf.shape(x)[0]
        logits.append(tf.reshape(o, [batch, -1]) if logits_per_anchor == 1 else
                      tf.reshape(o, [batch, -1, logits_per_anchor]))
        deltas.append(tf.reshape(d, [batch, -1, 4]))
    return logits, deltas


def objectness_probabilities(logits: tf.Tensor) -> tf.Tensor:
    """(B, N) logits -> sigmoid, or (B, N, 2) background and object logits -> the object's softmax (B, N)."""
    return tf.sigmoid(logits) if logits.shape.rank == 2 else tf.nn.softmax(logits, axis=-1)[..., 1]


def select_proposals_seed(logits: list[tf.Tensor], deltas: list[tf.Tensor], anchors: list, cfg: RPNConfig,
                          coding: str = "seed", box_xform_clip: float = 0.0) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The seed's ProposalLayer. Per-level logits (B, N_l[, 2]), deltas (B, N_l, 4), anchors (N_l, 4) in the
    normalised frame; `coding` and `box_xform_clip` the model's box coding -> proposals (B, P, 4) sorted by
    objectness, their probabilities (B, P), and (B, P) true: P = post_nms_top_n_test (POST_NMS_ROIS_INFERENCE),
    short rows padded with zero boxes, which the seed's heads classify like the others.

    All levels together: the top pre_nms_top_n_test (PRE_NMS_LIMIT) probabilities (tf.math.top_k: ties
    to the lower anchor), their anchors decoded, clipped to [0, 1], one NMS at nms_threshold.
    """
    scores = tf.concat([objectness_probabilities(t) for t in logits], axis=1)
    deltas = tf.concat(deltas, axis=1)
    anchors = tf.constant(np.concatenate(anchors))
    k = min(cfg.pre_nms_top_n_test, int(anchors.shape[0]))
    top_scores, top = tf.math.top_k(scores, k=k, sorted=True)
    boxes = box_coding.decode_with(coding, tf.gather(deltas, top, batch_dims=1), tf.gather(anchors, top),
                                   cfg.box_weights, box_xform_clip)
    boxes = box_coding.clip_to_window(boxes, tf.constant([0.0, 0.0, 1.0, 1.0]))
    n = cfg.post_nms_top_n_test
    keep, valid = grouped_nms(boxes, top_scores, n, cfg.nms_threshold)
    proposals = tf.where(valid[..., None], tf.gather(boxes, keep, batch_dims=1), 0.0)
    return proposals, tf.where(valid, tf.gather(top_scores, keep, batch_dims=1), 0.0), tf.ones_like(valid)


def select_proposals(logits: list[tf.Tensor], deltas: list[tf.Tensor], anchors: list, image_hw: tuple[int, int],
                     cfg: RPNConfig, box_xform_clip: float, training: bool = False, coding: str = "torchvision"
                     ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-level logits (B, N_l), deltas (B, N_l, 4), anchors (N_l, 4) -> proposals.

    Returns boxes (B, P, 4) in resized-image pixels sorted by objectness, their objectness
    probabilities (B, P), and a validity mask (B, P) (false for padding when fewer than P
    proposals survive NMS). P = post_nms_top_n.
    """
    pre_n = cfg.pre_nms_top_n_train if training else cfg.pre_nms_top_n_test
    post_n = cfg.post_nms_top_n_train if training else cfg.post_nms_top_n_test
    all_boxes, all_scores = [], []
    for level_logits, level_deltas, level_anchors in zip(logits, deltas, anchors):
        k = min(pre_n, int(level_anchors.shape[0]))
        top_logits, top_idx = tf.math.top_k(tf.stop_gradient(level_logits), k=k, sorted=True)
        top_deltas = tf.gather(tf.stop_gradient(level_deltas), top_idx, batch_dims=1)
        top_anchors = tf.gather(tf.constant(level_anchors), top_idx)
        boxes = box_coding.decode_with(coding, top_deltas, top_anchors, cfg.box_weights, box_xform_clip)
        boxes = box_coding.clip_to_image(boxes, image_hw[0], image_hw[1])
        scores = tf.sigmoid(top_logits)
        # Dropped boxes get a negative score, which the NMS below filters out.
        scores = tf.where(box_coding.is_large_enough(boxes, cfg.min_size), scores, -1.0)
        keep, valid = grouped_nms(boxes, scores, min(k, post_n), cfg.nms_threshold)
        all_boxes.append(tf.gather(boxes, keep, batch_dims=1))
        all_scores.append(tf.where(valid, tf.gather(scores, keep, batch_dims=1), -1.0))
    boxes = tf.concat(all_boxes, axis=1)
    scores = tf.concat(all_scores, axis=1)
    n = min(post_n, int(boxes.shape[1]))
    top_scores, idx = tf.math.top_k(scores, k=n, sorted=True)
    return tf.gather(boxes, idx, batch_dims=1), top_scores, top_scores >= 0.0


def anchor_targets(anchors: tf.Tensor, gt_boxes: tf.Tensor, gt_valid: tf.Tensor, cfg: RPNConfig, seed: tf.Tensor
                   ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """anchors (N, 4) of every level, gt_boxes (B, G, 4), gt_valid (B, G), seed int32 () ->
    positive (B, N) and negative (B, N) sample masks and the target deltas (B, N, 4).

    An anchor is positive at IoU >= fg_iou_threshold with a ground-truth box, or as the best
    anchor of one (low-quality matches allowed); negative below bg_iou_threshold; then at most
    batch_size_per_image of them are sampled per image, positive_fraction positive at most.
    """
    matched, label = match(batched_iou(gt_boxes, anchors), gt_valid, cfg.fg_iou_threshold, cfg.bg_iou_threshold,
                           allow_low_quality=True)
    positive, negative = sample(label, cfg.batch_size_per_image, cfg.positive_fraction, seed)
    targets = box_coding.encode(tf.gather(gt_boxes, matched, batch_dims=1), anchors, cfg.box_weights)
    return positive, negative, targets


def rpn_losses(logits: tf.Tensor, deltas: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor,
               target_deltas: tf.Tensor, cfg: RPNConfig) -> dict[str, tf.Tensor]:
    """logits (B, N), deltas (B, N, 4) of every level concatenated; positive, negative (B, N) and
    target_deltas (B, N, 4) from `anchor_targets` -> {"rpn_objectness": mean binary cross-entropy
    over the sampled anchors, "rpn_box": smooth L1 over the positives / the number sampled}."""
    sampled = tf.logical_or(positive, negative)
    return {"rpn_objectness": objectness_loss(logits, positive, sampled),
            "rpn_box": box_regression_loss(deltas, target_deltas, positive,
                                           tf.reduce_sum(tf.cast(sampled, tf.int32)), cfg.smooth_l1_beta)}


def objectness_loss(logits: tf.Tensor, positive: tf.Tensor, sampled: tf.Tensor) -> tf.Tensor:
    """logits (B, N), positive and sampled masks (B, N) -> mean binary cross-entropy over the sampled."""
    weight = tf.cast(sampled, tf.float32)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(positive, tf.float32), logits=logits)
    return tf.reduce_sum(bce * weight) / tf.maximum(tf.reduce_sum(weight), 1.0)

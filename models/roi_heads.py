"""RoI heads: the box head (3x3 convs if any, FC layers (two by default), class scores and per-class
box refinements), the per-class NMS that turns them into detections (or the seed's detection layer,
`detect_seed`), and the mask head (3x3 convs, a 2x transposed conv (or several, for larger masks),
and a per-class 1x1 conv whose channel of the detected class is the mask).

And what trains them: proposals (with the ground truth added) matched and sampled into RoIs, the
box classifier's and regressor's losses, the mask targets (ground-truth mini masks resampled at
the positive RoIs) and the mask loss, a per-pixel sigmoid on the ground-truth class's channel
only: classes do not compete for a pixel (the seed's point).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from . import box_coding
from .config import BoxHeadConfig
from .layers import Params, conv2d, conv_shapes, dense, dense_shapes
from .matching import IGNORED, batched_iou, box_regression_loss, match, sample
from .nms import grouped_nms


def box_head_shapes(channels: int, pool: int, fc_dim: int, num_classes: int, conv_dims: list[int] = (),
                    fc_layers: int = 2) -> dict[str, tuple]:
    """3x3 convs `box_head/conv1..` of conv_dims, then FC layers fc6, fc7, ... of fc_dim, then the predictors."""
    shapes = {}
    cin = channels
    for i, dim in enumerate(conv_dims):
        shapes.update(conv_shapes(f"box_head/conv{i + 1}", 3, cin, dim))
        cin = dim
    fin = cin * pool * pool
    for i in range(fc_layers):
        shapes.update(dense_shapes(f"box_head/fc{6 + i}", fin, fc_dim))
        fin = fc_dim
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


def box_head(params: Params, pooled: tf.Tensor, num_convs: int = 0, fc_layers: int = 2) -> tuple[tf.Tensor, tf.Tensor]:
    """pooled (R, S, S, C) -> class logits (R, K) and box deltas (R, K, 4): `num_convs` 3x3 convs, the
    flattened (S, S, C') features through `fc_layers` FC layers, the two predictors."""
    x = pooled
    for i in range(num_convs):
        x = conv2d(x, params, f"box_head/conv{i + 1}", relu=True)
    x = tf.reshape(x, [tf.shape(x)[0], -1])
    for i in range(fc_layers):
        x = dense(x, params, f"box_head/fc{6 + i}", relu=True)
    logits = dense(x, params, "box_head/cls_score")
    deltas = dense(x, params, "box_head/bbox_pred")
    return logits, tf.reshape(deltas, [tf.shape(x)[0], -1, 4])


def detect(logits: tf.Tensor, deltas: tf.Tensor, proposals: tf.Tensor, proposal_valid: tf.Tensor,
           image_hw: tuple[int, int], cfg: BoxHeadConfig, box_xform_clip: float, coding: str = "torchvision",
           classes: tuple[int, ...] | None = None):
    """Per-class decoding, score filtering and per-class NMS.

    logits (B, P, K), deltas (B, P, K, 4), proposals (B, P, 4), proposal_valid (B, P) ->
    boxes (B, D, 4), scores (B, D), class ids (B, D) int32 in 1..K-1, valid (B, D) bool;
    D = detections_per_image, sorted by score. `classes` (ids in 1..K-1, ascending): only these are
    decoded and take part in NMS and the best D (ModelConfig.detected_class_ids); None: all.
    """
    classes = tuple(range(1, logits.shape[-1])) if classes is None else classes
    scores = tf.gather(tf.nn.softmax(logits, axis=-1), classes, axis=2)
    boxes = box_coding.decode_with(coding, tf.gather(deltas, classes, axis=2), proposals[:, :, None, :],
                                   cfg.box_weights, box_xform_clip)
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
    class_ids = tf.gather(tf.constant(classes, tf.int32), top // d)
    return tf.gather(kept_boxes, top, batch_dims=1), top_scores, class_ids, top_scores >= 0.0


def detect_seed(logits: tf.Tensor, deltas: tf.Tensor, proposals: tf.Tensor, windows: tf.Tensor, cfg: BoxHeadConfig,
                coding: str = "seed", box_xform_clip: float = 0.0, classes: tuple[int, ...] | None = None):
    """The seed's DetectionLayer (refine_detections_graph) for a batch.

    logits (B, P, K), deltas (B, P, K, 4), proposals (B, P, 4) and windows (B, 4) (each frame's place in the
    square) in the seed's normalised frame -> boxes (B, D, 4), scores (B, D), class ids (B, D) int32,
    valid (B, D) bool; D = min(detections_per_image, P), sorted by score (ties: the lower RoI).

    Each RoI keeps one class, the argmax of the softmax over all classes with the background; background
    RoIs are dropped, and so are scores under score_threshold (DETECTION_MIN_CONFIDENCE; 0 keeps all).
    That class's deltas decode the RoI (`coding`), clipped to the window; then NMS per frame and class
    (at most D kept per class), and the best D of the survivors per frame. `classes` (ids in 1..K-1,
    ascending): RoIs whose argmax is another class are dropped too, before NMS; None: all classes.
    """
    probs = tf.nn.softmax(logits, axis=-1)
    class_ids = tf.argmax(probs, axis=-1, output_type=tf.int32)                 # (B, P)
    scores = tf.gather(probs, class_ids, batch_dims=2)
    boxes = box_coding.decode_with(coding, tf.gather(deltas, class_ids, batch_dims=2), proposals, cfg.box_weights,
                                   box_xform_clip)
    boxes = box_coding.clip_to_window(boxes, windows[:, None, :])
    keep = class_ids > 0
    if cfg.score_threshold:
        keep = tf.logical_and(keep, scores >= cfg.score_threshold)
    # One NMS group per (frame, class): each RoI takes part in its own class's only.
    batch, num_proposals = tf.shape(probs)[0], probs.shape[1]
    classes = tuple(range(1, probs.shape[2])) if classes is None else classes
    d = min(cfg.detections_per_image, num_proposals)
    in_class = tf.logical_and(keep[:, None, :],                                 # (B, C, P), C classes
                              class_ids[:, None, :] == tf.constant(classes)[None, :, None])
    group_scores = tf.reshape(tf.where(in_class, scores[:, None, :], -1.0), [-1, num_proposals])
    group_boxes = tf.reshape(tf.broadcast_to(boxes[:, None], [batch, len(classes), num_proposals, 4]),
                             [-1, num_proposals, 4])
    kept, kept_valid = grouped_nms(group_boxes, group_scores, d, cfg.nms_threshold)
    # Back to (B, P): a RoI survives if its class's NMS kept it.
    frame = tf.repeat(tf.range(batch), len(classes) * d)
    where = tf.stack([frame, tf.reshape(kept, [-1])], axis=1)
    survived = tf.scatter_nd(where, tf.cast(tf.reshape(kept_valid, [-1]), tf.int32), [batch, num_proposals]) > 0
    top_scores, top = tf.math.top_k(tf.where(survived, scores, -1.0), k=d, sorted=True)
    return (tf.gather(boxes, top, batch_dims=1), top_scores, tf.gather(class_ids, top, batch_dims=1),
            top_scores >= 0.0)


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


class SampledRoIs(NamedTuple):
    """The RoIs the box head trains on, S per image, flattened over the batch (R = B * S); the
    sampled ones first in each image, then padding (`sampled` false)."""
    boxes: tf.Tensor        # (R, 4) x1 y1 x2 y2 in image pixels
    frame: tf.Tensor        # (R,) int32: the image of the batch each RoI belongs to
    sampled: tf.Tensor      # (R,) bool: a real sample (positive or negative), not padding
    positive: tf.Tensor     # (R,) bool
    class_ids: tf.Tensor    # (R,) int32: the matched ground truth's class for positives, else 0 (background)
    gt_index: tf.Tensor     # (R,) int32: the matched ground truth, an index into the (B * G) flattened ground truth


def sample_rois(proposals: tf.Tensor, proposal_valid: tf.Tensor, gt_boxes: tf.Tensor, gt_classes: tf.Tensor,
                cfg: BoxHeadConfig, seed: tf.Tensor) -> SampledRoIs:
    """proposals (B, P, 4), proposal_valid (B, P), gt_boxes (B, G, 4), gt_classes (B, G) (0 pads),
    seed int32 () -> SampledRoIs with S = min(batch_size_per_image, P + G) per image.

    The ground-truth boxes join the proposals (so every object has a positive from the first
    step); a box is positive at IoU >= fg_iou_threshold with a ground truth, negative below
    bg_iou_threshold; at most batch_size_per_image are sampled, positive_fraction positive at most.
    """
    gt_valid = gt_classes > 0
    batch, num_gt = gt_boxes.shape[0], gt_boxes.shape[1]
    boxes = tf.concat([proposals, gt_boxes], axis=1)
    valid = tf.concat([proposal_valid, gt_valid], axis=1)
    matched, label = match(batched_iou(gt_boxes, boxes), gt_valid, cfg.fg_iou_threshold, cfg.bg_iou_threshold,
                           allow_low_quality=False)
    label = tf.where(valid, label, IGNORED)
    positive, negative = sample(label, cfg.batch_size_per_image, cfg.positive_fraction, seed)
    s = min(cfg.batch_size_per_image, int(boxes.shape[1]))
    sampled = tf.logical_or(positive, negative)
    _, pick = tf.math.top_k(tf.cast(sampled, tf.float32), k=s)          # the sampled boxes first

    def picked(t):
        return tf.reshape(tf.gather(t, pick, batch_dims=1), [-1] + t.shape[2:].as_list())

    frame = tf.repeat(tf.range(batch), s)
    gt_index = frame * num_gt + picked(matched)
    roi_positive = picked(positive)
    class_ids = tf.where(roi_positive, tf.gather(tf.reshape(gt_classes, [-1]), gt_index), 0)
    return SampledRoIs(picked(boxes), frame, picked(sampled), roi_positive, class_ids, gt_index)


def box_losses(class_logits: tf.Tensor, box_deltas: tf.Tensor, rois: SampledRoIs, gt_boxes: tf.Tensor,
               cfg: BoxHeadConfig) -> dict[str, tf.Tensor]:
    """class_logits (R, K), box_deltas (R, K, 4) float32 of the sampled RoIs, gt_boxes (B, G, 4) ->
    {"box_classifier": softmax cross-entropy over the sampled RoIs, "box_regression": smooth L1 of
    the ground-truth class's deltas over the positives / the number sampled}."""
    targets = box_coding.encode(tf.gather(tf.reshape(gt_boxes, [-1, 4]), rois.gt_index), rois.boxes, cfg.box_weights)
    return {"box_classifier": classification_loss(class_logits, rois.class_ids, rois.sampled),
            "box_regression": box_regression_loss(tf.gather(box_deltas, rois.class_ids, batch_dims=1), targets,
                                                  rois.positive, tf.reduce_sum(tf.cast(rois.sampled, tf.int32)),
                                                  cfg.smooth_l1_beta)}


def classification_loss(logits: tf.Tensor, class_ids: tf.Tensor, sampled: tf.Tensor) -> tf.Tensor:
    """logits (R, K), class_ids (R,) (0 = background), sampled (R,) -> mean softmax cross-entropy."""
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=class_ids, logits=logits)
    weight = tf.cast(sampled, tf.float32)
    return tf.reduce_sum(ce * weight) / tf.maximum(tf.reduce_sum(weight), 1.0)


def positive_rois(rois: SampledRoIs) -> SampledRoIs:
    """Only the positive RoIs (P of them, P <= R): what the mask head trains on."""
    return SampledRoIs(*(tf.gather(t, tf.where(rois.positive)[:, 0]) for t in rois))


def roi_mask_targets(masks: tf.Tensor, gt_boxes: tf.Tensor, rois: tf.Tensor, gt_indices: tf.Tensor,
                     size: int = 28) -> tf.Tensor:
    """Mask targets (R, size, size) float32 in [0, 1]: ground-truth mini masks resampled at RoIs.

    masks (N, M, M) uint8 mini masks of one image (or of a batch, flattened), gt_boxes (N, 4) and
    rois (R, 4) x1 y1 x2 y2 in the same pixels, gt_indices (R,) the ground truth each RoI is
    matched to. Target cell k of a RoI is sampled (bilinearly) at the cell's centre; what lies
    outside the ground-truth box is 0.
    """
    m = tf.cast(tf.shape(masks)[1], tf.float32)
    gt = tf.gather(tf.cast(gt_boxes, tf.float32), gt_indices)
    rois = tf.cast(rois, tf.float32)
    gt_wh = tf.maximum(gt[:, 2:] - gt[:, :2], 1e-6)
    # RoI edges as fractions of its box, moved in to the first and last target cell centres
    lo = (rois[:, :2] - gt[:, :2]) / gt_wh
    hi = (rois[:, 2:] - gt[:, :2]) / gt_wh
    first = lo + (hi - lo) * (0.5 / size)
    last = lo + (hi - lo) * ((size - 0.5) / size)
    # crop_and_resize normalises so that 0 and 1 are the centres of the first and last mask cell
    first, last = (first * m - 0.5) / (m - 1), (last * m - 0.5) / (m - 1)
    boxes = tf.stack([first[:, 1], first[:, 0], last[:, 1], last[:, 0]], axis=1)
    image = tf.cast(masks, tf.float32)[..., None] / 255.0
    targets = tf.image.crop_and_resize(image, boxes, tf.cast(gt_indices, tf.int32), [size, size],
                                       extrapolation_value=0.0)
    return targets[..., 0]


def mask_loss(mask_logits: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """mask_logits (R, M, M) of each RoI's ground-truth class, targets (R, M, M) in [0, 1] -> mean
    binary cross-entropy per pixel (0 when there is no positive RoI)."""
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=mask_logits)
    return tf.math.divide_no_nan(tf.reduce_sum(bce), tf.cast(tf.size(bce), tf.float32))

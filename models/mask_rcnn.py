"""Mask R-CNN: the stages wired together, the compiled inference graph, and `predict`.

Data flow of one graph call (B frames of one size):
  uint8 (B, H, W, 3) -> normalise, resize, pad -> ResNet C2..C5 -> FPN P2..P6 -> RPN proposals
  (B, P, 4) -> batched RoIAlign 7x7 on P2..P5 -> box head -> per-class NMS -> detections (B, D)
  -> batched RoIAlign 14x14 of the valid detections -> mask head -> (B, D, M, M) probabilities
  (M = 28, or 56 with mask_head.deconvs 2).
Then, outside the graph, boxes are scaled to each frame's pixels and masks pasted (or RLE-encoded).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from . import anchors as anchor_lib
from . import postprocess, preprocess
from .backbone import backbone_shapes, last_conv_of_blocks, resnet, stage_channels
from .config import ModelConfig, load_config
from .fpn import fpn, fpn_shapes
from .layers import init_params
from .roi_align import multilevel_roi_align, pad_edges
from .roi_heads import (box_head, box_head_shapes, deconv_name, detect, mask_head, mask_head_shapes,
                        nearest_upsampling_kernel)
from .rpn import rpn_head, rpn_shapes, select_proposals
from .weights import WeightsError, load_weights, save_weights

MASK_MODES = ("full", "rle", "none")


def param_shapes(config: ModelConfig) -> dict[str, tuple]:
    """Every parameter of the architecture that `config` describes, by name."""
    channels = config.fpn.channels
    shapes = backbone_shapes(config.backbone)
    shapes.update(fpn_shapes(stage_channels(config.backbone), channels))
    shapes.update(rpn_shapes(channels, len(config.anchors.aspect_ratios)))
    shapes.update(box_head_shapes(channels, config.roi_align.box_output_size, config.box_head.fc_dim,
                                  config.num_classes))
    shapes.update(mask_head_shapes(channels, config.mask_head.conv_dims, config.num_classes,
                                   config.mask_head.deconvs))
    return shapes


def initial_params(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random parameters: He-normal convs, N(0, 0.01) prediction layers, and the last conv of
    every residual branch zeroed so that each block starts as an identity (trains from scratch
    without batch statistics). Mask-head deconvs after the first start as nearest-neighbour
    upsampling."""
    special = {name: 0.0 for name in last_conv_of_blocks(config.backbone)}
    special.update({"rpn/objectness": 0.01, "rpn/deltas": 0.01, "box_head/cls_score": 0.01,
                    "box_head/bbox_pred": 0.001})
    params = init_params(param_shapes(config), seed, special)
    for k in range(1, config.mask_head.deconvs):
        kernel = deconv_name(k) + "/kernel"
        params[kernel] = nearest_upsampling_kernel(params[kernel].shape[-1])
    return params


def architecture_record(config: ModelConfig) -> dict:
    """What a weights file records about the model it belongs to."""
    return {"name": config.name, "class_names": list(config.class_names),
            "backbone": {"depth": config.backbone.depth, "width": config.backbone.width}}


@dataclass
class Detections:
    """The instances found in one frame, in that frame's pixels, sorted by score."""
    boxes: np.ndarray                      # (N, 4) float32 x1 y1 x2 y2
    scores: np.ndarray                     # (N,) float32
    class_ids: np.ndarray                  # (N,) int32
    labels: list[str]                      # N class names
    masks: np.ndarray | None = None        # (N, H, W) bool with masks="full"
    rles: list[dict] | None = None         # N COCO compressed RLE dicts with masks="rle"
    mask_probs: np.ndarray | None = field(default=None, repr=False)  # (N, M, M) before pasting (M = 28 usually)

    def __len__(self) -> int:
        return len(self.scores)


def to_compute(x: tf.Tensor, config: ModelConfig) -> tf.Tensor:
    """Cast to the compute precision (bfloat16 runs the convolutions and FC layers in bf16;
    box decoding, NMS, RoIAlign sampling and outputs stay float32)."""
    return tf.cast(x, tf.bfloat16) if config.precision == "bfloat16" else x


def pyramid(params, images: tf.Tensor, config: ModelConfig) -> list[tf.Tensor]:
    """Normalised padded images (B, H, W, 3) -> [P2, P3, P4, P5, P6] in the compute precision."""
    return fpn(params, resnet(params, to_compute(images, config), config.backbone))


def feature_anchors(features: list[tf.Tensor], padded_hw: tuple[int, int], config: ModelConfig) -> list[np.ndarray]:
    return anchor_lib.pyramid_anchors(padded_hw, [tuple(f.shape[1:3]) for f in features],
                                      config.anchors.sizes, config.anchors.aspect_ratios)


def pooling_features(features: list[tf.Tensor]) -> list[tf.Tensor]:
    """P2..P5 (the RPN-only P6 is not pooled) in float32, edge-padded once for every RoIAlign of the call."""
    return pad_edges([tf.cast(f, tf.float32) for f in features[:4]])


def pool(padded: list[tf.Tensor], boxes: tf.Tensor, box_indices: tf.Tensor, resized_hw: tuple[int, int],
         output_size: int, config: ModelConfig) -> tf.Tensor:
    """Batched multi-level RoIAlign over `pooling_features(...)`."""
    ra = config.roi_align
    return multilevel_roi_align(padded, boxes, box_indices, resized_hw, output_size, ra.sampling_ratio,
                                ra.aligned, ra.canonical_scale, ra.canonical_level, ra.level_eps)


class MaskRCNN(tf.Module):
    """Mask R-CNN over batches of frames. Build with `load_model`."""

    def __init__(self, config: ModelConfig, params: dict[str, np.ndarray], trainable: bool = False):
        super().__init__(name="mask_rcnn")
        self.config = config
        self.params = {name: tf.Variable(value, trainable=trainable, name=name.replace("/", "."))
                       for name, value in sorted(params.items())}
        self._graphs: dict[tuple[int, int], tf.types.experimental.PolymorphicFunction] = {}

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    def save(self, path: str | Path) -> Path:
        return save_weights(path, {n: v.numpy() for n, v in self.params.items()}, architecture_record(self.config))

    def graph_for(self, height: int, width: int):
        """The compiled inference graph for frames of one size, any batch size (traced once)."""
        if (height, width) not in self._graphs:
            spec = tf.TensorSpec([None, height, width, 3], tf.uint8)
            self._graphs[(height, width)] = tf.function(self._infer_graph, input_signature=[spec])
        return self._graphs[(height, width)]

    def _infer_graph(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 (B, H, W, 3), one size -> detections in resized pixels (see module docstring)."""
        cfg = self.config
        height, width = int(images.shape[1]), int(images.shape[2])
        resized_hw = preprocess.resized_size(height, width, cfg.input.min_size, cfg.input.max_size)
        padded_hw = preprocess.padded_size(*resized_hw, cfg.input.size_divisible)
        x = preprocess.normalize_resize_pad(images, resized_hw, padded_hw, cfg.input.mean, cfg.input.std)
        features = pyramid(self.params, x, cfg)
        logits, deltas = rpn_head(self.params, features)
        logits = [tf.cast(t, tf.float32) for t in logits]
        deltas = [tf.cast(t, tf.float32) for t in deltas]
        anchors = feature_anchors(features, padded_hw, cfg)
        proposals, _, proposal_valid = select_proposals(logits, deltas, anchors, resized_hw, cfg.rpn,
                                                        cfg.box_xform_clip)
        features = pooling_features(features)
        batch, num_proposals = tf.shape(proposals)[0], proposals.shape[1]
        flat_boxes = tf.reshape(proposals, [-1, 4])
        frame_of_box = tf.repeat(tf.range(batch), num_proposals)
        pooled = pool(features, flat_boxes, frame_of_box, resized_hw, cfg.roi_align.box_output_size, cfg)
        class_logits, box_deltas = box_head(self.params, to_compute(pooled, cfg))
        class_logits = tf.reshape(tf.cast(class_logits, tf.float32), [batch, num_proposals, cfg.num_classes])
        box_deltas = tf.reshape(tf.cast(box_deltas, tf.float32), [batch, num_proposals, cfg.num_classes, 4])
        boxes, scores, class_ids, valid = detect(class_logits, box_deltas, proposals, proposal_valid, resized_hw,
                                                 cfg.box_head, cfg.box_xform_clip)
        mask_probs = self._masks(features, boxes, class_ids, valid, resized_hw)
        return {"boxes": boxes, "scores": scores, "class_ids": class_ids, "valid": valid, "mask_probs": mask_probs}

    def _masks(self, features, boxes, class_ids, valid, resized_hw) -> tf.Tensor:
        """Mask probabilities (B, D, M, M) for the valid detections (zeros elsewhere)."""
        cfg = self.config
        batch, d = tf.shape(boxes)[0], boxes.shape[1]
        where = tf.where(valid)                               # (R, 2): frame, slot
        roi_boxes = tf.gather_nd(boxes, where)
        roi_classes = tf.gather_nd(class_ids, where)
        pooled = pool(features, roi_boxes, tf.cast(where[:, 0], tf.int32), resized_hw,
                      cfg.roi_align.mask_output_size, cfg)
        logits = mask_head(self.params, to_compute(pooled, cfg), roi_classes, len(cfg.mask_head.conv_dims),
                           cfg.mask_head.deconvs)
        probs = tf.sigmoid(tf.cast(logits, tf.float32))
        m = cfg.mask_size
        return tf.scatter_nd(where, probs, [batch, d, m, m])

    def predict(self, frames, masks: str = "full") -> list[Detections]:
        """Detect instances in `frames` (a list of uint8 RGB arrays of any sizes, or (B, H, W, 3)).

        Frames of the same size share one graph call. masks: "full" gives (N, H, W) bool masks,
        "rle" COCO RLE dicts (no full-frame arrays), "none" only boxes.
        """
        if masks not in MASK_MODES:
            raise ValueError(f"masks={masks!r}: expected one of {', '.join(MASK_MODES)}")
        frames = preprocess.as_frame_list(frames)
        by_size = defaultdict(list)
        for i, frame in enumerate(frames):
            by_size[frame.shape[:2]].append(i)
        results: list[Detections | None] = [None] * len(frames)
        for (height, width), indices in by_size.items():
            batch = np.stack([frames[i] for i in indices])
            raw = {k: v.numpy() for k, v in self.graph_for(height, width)(tf.constant(batch)).items()}
            resized_hw = preprocess.resized_size(height, width, self.config.input.min_size,
                                                 self.config.input.max_size)
            for j, i in enumerate(indices):
                results[i] = self._frame_detections(raw, j, (height, width), resized_hw, masks)
        return results

    def _frame_detections(self, raw: dict, j: int, frame_hw, resized_hw, masks: str) -> Detections:
        keep = raw["valid"][j]
        boxes = postprocess.rescale_boxes(raw["boxes"][j][keep], resized_hw, frame_hw)
        class_ids = raw["class_ids"][j][keep].astype(np.int32)
        probs = raw["mask_probs"][j][keep]
        mh = self.config.mask_head
        det = Detections(boxes=boxes, scores=raw["scores"][j][keep].astype(np.float32), class_ids=class_ids,
                         labels=[self.config.class_names[c] for c in class_ids], mask_probs=probs)
        if masks == "full":
            det.masks = postprocess.paste_masks(probs, boxes, frame_hw, mh.paste_padding, mh.threshold, mh.paste)
        elif masks == "rle":
            det.rles = postprocess.masks_to_rles(probs, boxes, frame_hw, mh.paste_padding, mh.threshold, mh.paste)
        return det


def load_model(config, weights: str | Path | None = None, seed: int = 0, trainable: bool = False) -> MaskRCNN:
    """A MaskRCNN from a config (YAML path, mapping or ModelConfig) and a weights file.

    Without weights the parameters are seeded random values (for tests and training from scratch).
    """
    config = load_config(config)
    shapes = param_shapes(config)
    if weights is None:
        params = initial_params(config, seed)
    else:
        params, meta = load_weights(weights, shapes)
        names = meta.get("class_names")
        if names is not None and len(names) != config.num_classes:
            raise WeightsError(f"{weights}: made for {len(names)} classes, the configuration has "
                               f"{config.num_classes}")
    return MaskRCNN(config, params, trainable=trainable)

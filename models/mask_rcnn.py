"""Mask R-CNN: the stages wired together, the compiled inference graph, `predict`, and the
training losses computed on the same forward pass.

Data flow of one graph call (B frames of one size):
  uint8 (B, H, W, 3) -> normalise, resize, pad -> ResNet C2..C5 -> FPN P2..P6 -> RPN proposals
  (B, P, 4) -> batched RoIAlign 7x7 on P2..P5 -> box head -> per-class NMS -> detections (B, D)
  -> batched RoIAlign 14x14 of the valid detections -> mask head -> (B, D, M, M) probabilities
  (M = 28, or 56 with mask_head.deconvs 2).
Then, outside the graph, boxes are scaled to each frame's pixels and masks pasted (or RLE-encoded).

With the seed's conventions (configs/seed_*.yaml: `ModelConfig.seed_frame`) every frame is first molded
into one square outside the graph (the seed's resize and centred padding), so frames of any sizes share
one graph call; the graph also takes each frame's window in the square; boxes are in the seed's
normalised frame of the square from the anchors to the detections; and `unmold_boxes` takes them back to
each frame's whole pixels. Which stage runs which variant is a config value of that stage.

Training (`MaskRCNN.losses`) runs the same `features_and_proposals` (with the train-time top-n)
and calls the box and mask heads the same way (`classify_boxes`, `mask_logits`: pooled features
cast to the compute precision, outputs back to float32); between them, each stage's own targets
and losses (`rpn.py`, `roi_heads.py`).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from . import anchors as anchor_lib
from . import postprocess, preprocess, winograd
from .backbone import backbone_shapes, last_conv_of_blocks, resnet, stage_channels
from .config import ModelConfig, config_name, load_config
from .errors import ConfigError
from .fpn import fpn, fpn_shapes
from .image_size import input_sizes, square_window
from .layers import init_params
from .roi_align import multilevel_roi_align, multilevel_roi_align_seed, pad_edges
from .roi_heads import (
    box_head,
    box_head_shapes,
    box_losses,
    deconv_name,
    detect,
    detect_seed,
    mask_head,
    mask_head_shapes,
    mask_loss,
    nearest_upsampling_kernel,
    positive_rois,
    roi_mask_targets,
    sample_rois,
)
from .rpn import anchor_targets, rpn_head, rpn_losses, rpn_shapes, select_proposals, select_proposals_seed
from .weights import load_weights, save_weights

MASK_MODES = ("full", "rle", "none")


def param_shapes(config: ModelConfig) -> dict[str, tuple]:
    """Every parameter of the architecture that `config` describes, by name."""
    channels = config.fpn.channels
    shapes = backbone_shapes(config.backbone)
    shapes.update(fpn_shapes(stage_channels(config.backbone), channels))
    rpn = config.rpn
    shapes.update(rpn_shapes(channels, len(config.anchors.aspect_ratios), rpn.conv_depth, rpn.conv_channels,
                             logits_per_anchor(config)))
    bh = config.box_head
    shapes.update(box_head_shapes(channels, config.roi_align.box_output_size, bh.fc_dim, config.num_classes,
                                  bh.conv_dims, bh.fc_layers))
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


def logits_per_anchor(config: ModelConfig) -> int:
    """The RPN's objectness logits per anchor: 1 (sigmoid) or 2 (softmax over background and object)."""
    return 2 if config.rpn.objectness == "softmax" else 1


def weights_record(config: ModelConfig, made_by: str) -> dict:
    """What a weights file records about its model: how it was made ("training", "conversion" or
    "saved"), the full configuration, and the YAML that configuration came from (if any)."""
    return {"made_by": made_by, "config": config.to_dict(), "config_file": config.source}


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
                                      config.anchors.sizes, config.anchors.aspect_ratios, config.anchors.layout)


def pooling_features(features: list[tf.Tensor], config: ModelConfig) -> list[tf.Tensor]:
    """P2..P5 (the RPN-only P6 is not pooled) in float32, edge-padded once for every RoIAlign of the call
    (the seed's RoIAlign crops the unpadded maps)."""
    maps = [tf.cast(f, tf.float32) for f in features[:4]]
    return maps if config.roi_align.method == "seed" else pad_edges(maps)


def pool(maps: list[tf.Tensor], boxes: tf.Tensor, box_indices: tf.Tensor, image_hw: tuple[int, int],
         output_size: int, config: ModelConfig) -> tf.Tensor:
    """Batched multi-level RoIAlign over `pooling_features(...)`; image_hw is the resized image (the square
    with the seed's RoIAlign)."""
    ra = config.roi_align
    if ra.method == "seed":
        return multilevel_roi_align_seed(maps, boxes, box_indices, float(image_hw[0] * image_hw[1]), output_size,
                                         ra.canonical_scale, ra.canonical_level)
    return multilevel_roi_align(maps, boxes, box_indices, image_hw, output_size, ra.sampling_ratio,
                                ra.aligned, ra.canonical_scale, ra.canonical_level, ra.level_eps)


class FeaturesAndProposals(NamedTuple):
    """What `MaskRCNN.features_and_proposals` gives the heads (and the RPN's losses)."""
    features: list          # [P2..P6] (B, H_l, W_l, C) in the compute precision
    image_hw: tuple         # (height, width) of the resized images: the pixels every box is in (the seed: the square)
    anchors: list           # [(N_l, 4)] numpy, per level, in the order of the RPN's outputs
    objectness: list        # [(B, N_l)] float32 logits per level
    deltas: list            # [(B, N_l, 4)] float32 per level
    proposals: tf.Tensor    # (B, P, 4) sorted by objectness
    proposal_valid: tf.Tensor  # (B, P) bool, false for padding


class MaskRCNN(tf.Module):
    """Mask R-CNN over batches of frames. Build with `load_model`."""

    def __init__(self, config: ModelConfig, params: dict[str, np.ndarray], trainable: bool = False,
                 winograd_tile: int | None = winograd.TILE):
        super().__init__(name="mask_rcnn")
        self.config = config
        self.params = {name: tf.Variable(value, trainable=trainable, name=name.replace("/", "."))
                       for name, value in sorted(params.items())}
        # What the stages read: the parameters and, for inference in float32 where the op builds,
        # each 3x3 kernel's Winograd transform (models/winograd.py; conv2d uses it at stride 1).
        self.stage_params = self.params
        self.winograd_tile = None
        if winograd_tile and not trainable and config.precision == "float32" and winograd.available():
            self.stage_params = {**self.params, **{
                name.removesuffix("kernel") + "winograd": tf.constant(winograd.transform_kernel(value, winograd_tile))
                for name, value in params.items() if name.endswith("/kernel") and np.shape(value)[:2] == (3, 3)}}
            self.winograd_tile = winograd_tile
        self._graphs: dict[tuple[int, int], tf.types.experimental.PolymorphicFunction] = {}

    @property
    def convolution(self) -> str:
        """How its 3x3 stride-1 convolutions run: "winograd 4x4" (F(4x4, 3x3), models/winograd.py),
        "winograd 2x2" or "direct"."""
        return f"winograd {self.winograd_tile}x{self.winograd_tile}" if self.winograd_tile else "direct"

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    def save(self, path: str | Path, made_by: str = "saved") -> Path:
        """Write the parameters and the full configuration (`weights_record`) to an .npz file."""
        return save_weights(path, {n: v.numpy() for n, v in self.params.items()}, weights_record(self.config, made_by))

    def graph_for(self, height: int, width: int):
        """The compiled inference graph for frames of one size, any batch size (traced once). With the
        seed's detection layer it also takes each frame's window, (B, 4) float32 (postprocess.normalized_windows)."""
        if (height, width) not in self._graphs:
            specs = [tf.TensorSpec([None, height, width, 3], tf.uint8)]
            if self.config.box_head.detection == "seed":
                specs.append(tf.TensorSpec([None, 4], tf.float32))
            self._graphs[(height, width)] = tf.function(self._infer_graph, input_signature=specs)
        return self._graphs[(height, width)]

    def features_and_proposals(self, images: tf.Tensor, training: bool = False) -> FeaturesAndProposals:
        """uint8 (B, H, W, 3) images of one size -> features P2..P6, the RPN's outputs and proposals.

        Normalise, resize (by the config's rule) and pad -> backbone -> FPN -> RPN head -> anchors
        -> proposals. With `training` the images are the training canvas, already resized and
        padded by the training input (so only normalised here), and the RPN keeps its train-time
        top-n.
        """
        cfg = self.config
        height, width = int(images.shape[1]), int(images.shape[2])
        if cfg.seed_frame:   # molded squares (mold_square): only normalised here; boxes in the square's frame
            image_hw = padded_hw = (height, width)
            x = preprocess.normalize(images, cfg.input.mean, cfg.input.std, cfg.input.pixel_scale)
        else:
            if training:
                image_hw = padded_hw = (height, width)
            else:
                image_hw, padded_hw = input_sizes(height, width, cfg.input)
            x = preprocess.normalize_resize_pad(images, image_hw, padded_hw, cfg.input.mean, cfg.input.std,
                                                cfg.input.pixel_scale)
        features = pyramid(self.stage_params, x, cfg)
        logits, deltas = rpn_head(self.stage_params, features, cfg.rpn.conv_depth, logits_per_anchor(cfg))
        logits = [tf.cast(t, tf.float32) for t in logits]
        deltas = [tf.cast(t, tf.float32) for t in deltas]
        anchors = feature_anchors(features, padded_hw, cfg)
        if cfg.rpn.selection == "seed":
            proposals, _, proposal_valid = select_proposals_seed(logits, deltas, anchors, cfg.rpn, cfg.box_coding,
                                                                 cfg.box_xform_clip)
        else:
            proposals, _, proposal_valid = select_proposals(logits, deltas, anchors, image_hw, cfg.rpn,
                                                            cfg.box_xform_clip, training=training)
        return FeaturesAndProposals(features, image_hw, anchors, logits, deltas, proposals, proposal_valid)

    def classify_boxes(self, pooling: list[tf.Tensor], boxes: tf.Tensor, frame_of_box: tf.Tensor,
                       image_hw: tuple[int, int]) -> tuple[tf.Tensor, tf.Tensor]:
        """The box head on RoIs: pooling = `pooling_features(...)`, boxes (R, 4), frame_of_box (R,) ->
        class logits (R, K) and box deltas (R, K, 4), float32 (computed in the compute precision)."""
        cfg = self.config
        pooled = pool(pooling, boxes, frame_of_box, image_hw, cfg.roi_align.box_output_size, cfg)
        class_logits, box_deltas = box_head(self.stage_params, to_compute(pooled, cfg), len(cfg.box_head.conv_dims),
                                            cfg.box_head.fc_layers)
        return tf.cast(class_logits, tf.float32), tf.cast(box_deltas, tf.float32)

    def mask_logits(self, pooling: list[tf.Tensor], boxes: tf.Tensor, frame_of_box: tf.Tensor, class_ids: tf.Tensor,
                    image_hw: tuple[int, int]) -> tf.Tensor:
        """The mask head on RoIs: boxes (R, 4), frame_of_box (R,), class_ids (R,) -> logits (R, M, M)
        float32 of each RoI's class channel (computed in the compute precision)."""
        cfg = self.config
        pooled = pool(pooling, boxes, frame_of_box, image_hw, cfg.roi_align.mask_output_size, cfg)
        logits = mask_head(self.stage_params, to_compute(pooled, cfg), class_ids, len(cfg.mask_head.conv_dims),
                           cfg.mask_head.deconvs)
        return tf.cast(logits, tf.float32)

    def _infer_graph(self, images: tf.Tensor, windows: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """uint8 (B, H, W, 3), one size (and the seed's windows (B, 4)) -> detections in resized pixels, or in
        the seed's normalised frame of the square (see module docstring)."""
        cfg = self.config
        stage = self.features_and_proposals(images)
        proposals, image_hw = stage.proposals, stage.image_hw
        pooling = pooling_features(stage.features, cfg)
        batch, num_proposals = tf.shape(proposals)[0], proposals.shape[1]
        class_logits, box_deltas = self.classify_boxes(pooling, tf.reshape(proposals, [-1, 4]),
                                                       tf.repeat(tf.range(batch), num_proposals), image_hw)
        class_logits = tf.reshape(class_logits, [batch, num_proposals, cfg.num_classes])
        box_deltas = tf.reshape(box_deltas, [batch, num_proposals, cfg.num_classes, 4])
        if cfg.box_head.detection == "seed":
            boxes, scores, class_ids, valid = detect_seed(class_logits, box_deltas, proposals, windows, cfg.box_head,
                                                          cfg.box_coding, cfg.box_xform_clip, cfg.detected_class_ids)
        else:
            boxes, scores, class_ids, valid = detect(class_logits, box_deltas, proposals, stage.proposal_valid,
                                                     image_hw, cfg.box_head, cfg.box_xform_clip, cfg.box_coding,
                                                     cfg.detected_class_ids)
        mask_probs = self._masks(pooling, boxes, class_ids, valid, image_hw)
        return {"boxes": boxes, "scores": scores, "class_ids": class_ids, "valid": valid, "mask_probs": mask_probs}

    def _masks(self, pooling, boxes, class_ids, valid, image_hw) -> tf.Tensor:
        """Mask probabilities (B, D, M, M) for the valid detections (zeros elsewhere)."""
        batch, d = tf.shape(boxes)[0], boxes.shape[1]
        where = tf.where(valid)                               # (R, 2): frame, slot
        logits = self.mask_logits(pooling, tf.gather_nd(boxes, where), tf.cast(where[:, 0], tf.int32),
                                  tf.gather_nd(class_ids, where), image_hw)
        m = self.config.mask_size
        return tf.scatter_nd(where, tf.sigmoid(logits), [batch, d, m, m])

    def losses(self, images: tf.Tensor, gt_boxes: tf.Tensor, gt_classes: tf.Tensor, gt_masks: tf.Tensor,
               seed: tf.Tensor) -> dict[str, tf.Tensor]:
        """The five training losses of one batch, on this model's own forward pass.

        images uint8 (B, Hc, Wc, 3) on the training canvas; gt_boxes (B, G, 4) in canvas pixels;
        gt_classes (B, G) int32 (0 pads); gt_masks (B, G, m, m) uint8 mini masks; seed int32 () for
        the samplers -> {"rpn_objectness", "rpn_box", "box_classifier", "box_regression", "mask"}.
        """
        cfg = self.config
        require_trainable(cfg)
        stage = self.features_and_proposals(images, training=True)
        anchors = tf.constant(np.concatenate(stage.anchors))
        positive, negative, targets = anchor_targets(anchors, gt_boxes, gt_classes > 0, cfg.rpn, seed)
        result = rpn_losses(tf.concat(stage.objectness, 1), tf.concat(stage.deltas, 1), positive, negative, targets,
                            cfg.rpn)

        rois = sample_rois(stage.proposals, stage.proposal_valid, gt_boxes, gt_classes, cfg.box_head, seed + 2)
        pooling = pooling_features(stage.features, cfg)
        class_logits, box_deltas = self.classify_boxes(pooling, rois.boxes, rois.frame, stage.image_hw)
        result.update(box_losses(class_logits, box_deltas, rois, gt_boxes, cfg.box_head))

        # The mask head on the positive RoIs, against the ground-truth class's channel only.
        pos = positive_rois(rois)
        logits = self.mask_logits(pooling, pos.boxes, pos.frame, pos.class_ids, stage.image_hw)
        flat_masks = tf.reshape(gt_masks, [-1] + gt_masks.shape[2:].as_list())
        targets = roi_mask_targets(flat_masks, tf.reshape(gt_boxes, [-1, 4]), pos.boxes, pos.gt_index,
                                   size=cfg.mask_size)
        result["mask"] = mask_loss(logits, targets)
        return result

    def predict(self, frames, masks: str = "full") -> list[Detections]:
        """Detect instances in `frames` (a list of uint8 RGB arrays of any sizes, or (B, H, W, 3)).

        Frames of the same size share one graph call (with the seed's square, all frames do). masks:
        "full" gives (N, H, W) bool masks, "rle" COCO RLE dicts (no full-frame arrays), "none" only boxes.
        """
        if masks not in MASK_MODES:
            raise ValueError(f"masks={masks!r}: expected one of {', '.join(MASK_MODES)}")
        frames = preprocess.as_frame_list(frames)
        results: list[Detections | None] = [None] * len(frames)
        for indices, inputs, geometry in self._graph_calls(frames):
            graph = self.graph_for(*inputs[0].shape[1:3])
            raw = {k: v.numpy() for k, v in graph(*[tf.constant(x) for x in inputs]).items()}
            for j, i in enumerate(indices):
                results[i] = self._frame_detections(raw, j, frames[i].shape[:2], geometry[j], masks)
        return results

    def _graph_calls(self, frames: list[np.ndarray]):
        """Yield (frame indices, graph inputs, per-frame geometry) for each graph call over `frames`: one call
        per frame size, inputs (uint8 (B, H, W, 3),), geometry the resized (height, width); or, in the seed's
        frame, one call for all, inputs (molded squares (B, S, S, 3), windows (B, 4)), geometry the windows."""
        cfg = self.config.input
        if not self.config.seed_frame:
            by_size = defaultdict(list)
            for i, frame in enumerate(frames):
                by_size[frame.shape[:2]].append(i)
            for (height, width), indices in by_size.items():
                resized_hw = input_sizes(height, width, cfg)[0]
                yield indices, (np.stack([frames[i] for i in indices]),), [resized_hw] * len(indices)
            return
        side = cfg.max_size
        resized = [input_sizes(*frame.shape[:2], cfg)[0] for frame in frames]
        molded = np.stack([preprocess.mold_square(frame, hw, side) for frame, hw in zip(frames, resized)])
        windows = postprocess.normalized_windows(np.array([square_window(hw, side) for hw in resized]), side)
        yield list(range(len(frames))), (molded, windows), windows

    def _frame_detections(self, raw: dict, j: int, frame_hw, geometry, masks: str) -> Detections:
        """Frame j of a graph call's outputs in the frame's own pixels; geometry from `_graph_calls`."""
        keep = raw["valid"][j]
        boxes, scores = raw["boxes"][j][keep], raw["scores"][j][keep].astype(np.float32)
        class_ids = raw["class_ids"][j][keep].astype(np.int32)
        probs = raw["mask_probs"][j][keep]
        if self.config.seed_frame:
            boxes, kept = postprocess.unmold_boxes(boxes, geometry, frame_hw)
            scores, class_ids, probs = scores[kept], class_ids[kept], probs[kept]
        else:
            boxes = postprocess.rescale_boxes(boxes, geometry, frame_hw)
        mh = self.config.mask_head
        det = Detections(boxes=boxes, scores=scores, class_ids=class_ids,
                         labels=[self.config.class_names[c] for c in class_ids], mask_probs=probs)
        if masks == "full":
            det.masks = postprocess.paste_masks(probs, boxes, frame_hw, mh.paste_padding, mh.threshold, mh.paste)
        elif masks == "rle":
            det.rles = postprocess.masks_to_rles(probs, boxes, frame_hw, mh.paste_padding, mh.threshold, mh.paste)
        return det


def require_trainable(config: ModelConfig) -> None:
    """ConfigError unless `models.training` can train `config` (the seed's conventions run inference only)."""
    if config.trainable is not None:
        raise ConfigError(f"{config_name(config)}: training does not support {config.trainable}; "
                          "the seed's conventions are for running its weights")


def load_model(config, weights: str | Path | None = None, seed: int = 0, trainable: bool = False,
               winograd_tile: int | None = winograd.TILE) -> MaskRCNN:
    """A MaskRCNN from a config (YAML path, mapping or ModelConfig) and a weights file.

    Without weights the parameters are seeded random values (for tests and training from scratch).
    `winograd_tile`: run the 3x3 stride-1 convolutions of float32 inference as Winograd F(m x m, 3x3)
    with this m (2 or 4) where the op builds (models/winograd.py); None: TensorFlow's direct convolution.
    """
    config = load_config(config)
    shapes = param_shapes(config)
    if weights is None:
        params = initial_params(config, seed)
    else:
        params, _ = load_weights(weights, shapes, config_name(config))
    return MaskRCNN(config, params, trainable=trainable, winograd_tile=winograd_tile)

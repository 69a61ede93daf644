"""The seed's Keras weights (and matterport's, same graph and layer names) as this project's parameters.

    maskstream convert keras WEIGHTS.h5 DST.npz [--classes FILE] [--config configs/seed_r101_coco.yaml]

`read_seed_weights` (keras_h5.py) reads the .h5 with h5py and infers the architecture from its shapes
(ResNet depth from the stage-4 blocks present, the widths, the number of classes); `seed_config` makes
the configuration from configs/seed_r{50,101}_coco.yaml with those; `seed_params` maps the layers:

    conv1 + bn_conv1                              -> backbone/conv1
    res{s}{b}_branch2a/2b/2c + bn{s}{b}_branch2*  -> backbone/layer{s-1}/{b - "a"}/conv1/conv2/conv3
    res{s}a_branch1 + bn{s}a_branch1              -> backbone/layer{s-1}/0/downsample
    fpn_c{k}p{k}, fpn_p{k}                        -> fpn/inner{k-2}, fpn/layer{k-2}
    rpn_conv_shared, rpn_class_raw, rpn_bbox_pred -> rpn/conv, rpn/objectness (two logits per anchor),
                                                     rpn/deltas
    mrcnn_class_conv1 + mrcnn_class_bn1           -> box_head/fc6 (a 7x7 "valid" conv is an FC on the
                                                     (7, 7, C) features, already in this model's order)
    mrcnn_class_conv2 + mrcnn_class_bn2           -> box_head/fc7
    mrcnn_class_logits, mrcnn_bbox_fc             -> box_head/cls_score, box_head/bbox_pred
    mrcnn_mask_conv{i} + mrcnn_mask_bn{i}         -> mask_head/fcn{i}
    mrcnn_mask_deconv, mrcnn_mask                 -> mask_head/deconv, mask_head/logits

Every batch norm (Keras, in inference mode, epsilon backbone.frozen_bn_eps: 1e-3) is folded into the
conv before it, that conv's bias included, in float64: kernel x gamma / sqrt(var + eps), (bias - mean) x
that + beta. The seed's box deltas are (dy, dx, dh, dw) per anchor and per class; their output columns
are permuted to this model's (dx, dy, dw, dh).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import ModelConfig, load_config
from ..errors import ConversionError
from .keras_h5 import SeedArchitecture, Weights, read_seed_weights

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SEED_CONFIGS = {50: CONFIGS / "seed_r50_coco.yaml", 101: CONFIGS / "seed_r101_coco.yaml"}
SEED_DELTA_ORDER = [1, 0, 3, 2]        # (dy, dx, dh, dw) -> (dx, dy, dw, dh)


def read_class_names(path: Path, num_classes: int, source: str) -> list[str]:
    """The seed's model_data/*_classes.txt: one class name per line, without the background (the seed adds
    "BG"); a file that also lists the background first is read as it is."""
    if not path.is_file():
        raise ConversionError(f"{path}: no such classes file")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) == num_classes - 1:
        return ["__background__"] + names
    if len(names) == num_classes:
        return names
    raise ConversionError(f"{path}: {len(names)} class names, but {source} has {num_classes} classes (the "
                          f"background and {num_classes - 1} others: one name per line, without the background)")


def seed_config(arch: SeedArchitecture, class_names: list[str], base: str | Path | None = None) -> ModelConfig:
    """The seed configuration (configs/seed_r{depth}_coco.yaml, or `base`) with the architecture's widths
    and `class_names`."""
    config = load_config(base or SEED_CONFIGS[arch.depth])
    config.backbone.depth = arch.depth
    config.backbone.width = arch.stem_width
    config.fpn.channels = arch.fpn_channels
    config.rpn.conv_channels = arch.rpn_channels
    config.box_head.fc_dim = arch.fc_dim
    config.mask_head.conv_dims = [arch.mask_channels] * 4
    config.class_names = list(class_names)
    if arch.anchors_per_location != len(config.anchors.aspect_ratios):
        raise ConversionError(f"{config.source}: {len(config.anchors.aspect_ratios)} anchor ratios, the weights have "
                              f"{arch.anchors_per_location} anchors per location")
    if arch.pool_size != config.roi_align.box_output_size:
        raise ConversionError(f"{config.source}: roi_align.box_output_size {config.roi_align.box_output_size}, the "
                              f"weights' POOL_SIZE is {arch.pool_size}")
    config.validate(config.source or "model")
    return config


def fold(weights: Weights, conv: str, bn: str | None, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Keras layer `conv` (kernel, bias) with batch norm `bn` after it folded in -> (kernel, bias) float32."""
    kernel = weights[conv]["kernel"].astype(np.float64)
    bias = weights[conv]["bias"].astype(np.float64)
    if bn is not None:
        b = {k: v.astype(np.float64) for k, v in weights[bn].items()}
        scale = b["gamma"] / np.sqrt(b["moving_variance"] + eps)
        kernel = kernel * scale
        bias = (bias - b["moving_mean"]) * scale + b["beta"]
    return kernel.astype(np.float32), bias.astype(np.float32)


def permute_deltas(kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output columns grouped by 4 in the seed's (dy, dx, dh, dw) -> (dx, dy, dw, dh), for any kernel layout
    whose last axis is the output."""
    order = (np.arange(bias.shape[0]).reshape(-1, 4)[:, SEED_DELTA_ORDER]).ravel()
    return kernel[..., order], bias[order]


def seed_params(weights: Weights, config: ModelConfig) -> dict[str, np.ndarray]:
    """The layers of a seed .h5 (read_keras_h5, checked) -> this model's parameters for `config` (see the
    module docstring for the mapping)."""
    eps = config.backbone.frozen_bn_eps
    out: dict[str, np.ndarray] = {}

    def put(name: str, pair: tuple[np.ndarray, np.ndarray]) -> None:
        out[f"{name}/kernel"], out[f"{name}/bias"] = pair

    put("backbone/conv1", fold(weights, "conv1", "bn_conv1", eps))
    for layer in weights:
        if layer.startswith("res") and "_branch" in layer:
            stage, block, branch = int(layer[3]), layer[4:layer.index("_")], layer.split("_branch")[1]
            name = f"backbone/layer{stage - 1}/{ord(block) - ord('a')}"
            target = "downsample" if branch == "1" else {"2a": "conv1", "2b": "conv2", "2c": "conv3"}[branch]
            put(f"{name}/{target}", fold(weights, layer, f"bn{stage}{block}_branch{branch}", eps))
    for level in (2, 3, 4, 5):
        put(f"fpn/inner{level - 2}", fold(weights, f"fpn_c{level}p{level}", None, eps))
        put(f"fpn/layer{level - 2}", fold(weights, f"fpn_p{level}", None, eps))
    put("rpn/conv", fold(weights, "rpn_conv_shared", None, eps))
    put("rpn/objectness", fold(weights, "rpn_class_raw", None, eps))
    put("rpn/deltas", permute_deltas(*fold(weights, "rpn_bbox_pred", None, eps)))
    kernel, bias = fold(weights, "mrcnn_class_conv1", "mrcnn_class_bn1", eps)
    put("box_head/fc6", (kernel.reshape(-1, kernel.shape[-1]), bias))          # (7, 7, C, F) -> (49 C, F)
    kernel, bias = fold(weights, "mrcnn_class_conv2", "mrcnn_class_bn2", eps)
    put("box_head/fc7", (kernel.reshape(-1, kernel.shape[-1]), bias))
    put("box_head/cls_score", fold(weights, "mrcnn_class_logits", None, eps))
    put("box_head/bbox_pred", permute_deltas(*fold(weights, "mrcnn_bbox_fc", None, eps)))
    for i in range(1, 5):
        put(f"mask_head/fcn{i}", fold(weights, f"mrcnn_mask_conv{i}", f"mrcnn_mask_bn{i}", eps))
    put("mask_head/deconv", fold(weights, "mrcnn_mask_deconv", None, eps))    # both (kh, kw, out, in)
    put("mask_head/logits", fold(weights, "mrcnn_mask", None, eps))
    return out


def convert_seed_h5(path: str | Path, classes: str | Path | None = None, config: str | Path | None = None
                    ) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """A seed / matterport Mask R-CNN .h5 -> (its configuration, this model's parameters).

    Class names from `classes` (the seed's classes file), else COCO's when the file has 81 classes.
    Raises ConversionError (one line) for a file that is not such weights, or whose classes are unnamed.
    """
    from ..mask_rcnn import param_shapes
    from ..weights import first_mismatch

    weights, arch = read_seed_weights(path)
    if classes is not None:
        names = read_class_names(Path(classes), arch.num_classes, str(path))
    else:
        names = load_config(SEED_CONFIGS[arch.depth]).class_names
        if len(names) != arch.num_classes:
            raise ConversionError(f"{path}: {arch.num_classes} classes, not COCO's {len(names)}: name them with "
                                  "--classes FILE (one per line, without the background, as the seed's "
                                  "model_data/*_classes.txt)")
    model_config = seed_config(arch, names, config)
    params = seed_params(weights, model_config)
    problem = first_mismatch(params, param_shapes(model_config))
    if problem:
        raise ConversionError(f"{path}: {problem} (there: the converted weights, here: {model_config.source})")
    return model_config, params


def reference_settings(config: ModelConfig, reference) -> ModelConfig:
    """Set the seed config values a reference of bench/seed_reference.py records (`config/<NAME>`) on
    `config`, each to the key it is: the sizes, thresholds and limits it ran with."""
    def value(name):
        return reference[f"config/{name}"].item() if reference[f"config/{name}"].ndim == 0 else \
            reference[f"config/{name}"].tolist()

    if value("IMAGE_RESIZE_MODE") != "square" or value("RPN_ANCHOR_STRIDE") != 1:
        raise ValueError("the reference runs a resize mode or anchor stride the seed configuration does not")
    config.input.min_size, config.input.max_size = int(value("IMAGE_MIN_DIM")), int(value("IMAGE_MAX_DIM"))
    config.input.mean = [float(v) for v in value("MEAN_PIXEL")]
    config.anchors.sizes = [float(v) for v in value("RPN_ANCHOR_SCALES")]
    config.anchors.aspect_ratios = [float(v) for v in value("RPN_ANCHOR_RATIOS")]
    config.rpn.box_weights = [1.0 / v for v in value("RPN_BBOX_STD_DEV")]
    config.rpn.pre_nms_top_n_test = int(value("PRE_NMS_LIMIT"))
    config.rpn.post_nms_top_n_test = int(value("POST_NMS_ROIS_INFERENCE"))
    config.rpn.nms_threshold = float(value("RPN_NMS_THRESHOLD"))
    config.roi_align.box_output_size = int(value("POOL_SIZE"))
    config.roi_align.mask_output_size = int(value("MASK_POOL_SIZE"))
    config.box_head.box_weights = [1.0 / v for v in value("BBOX_STD_DEV")]
    config.box_head.score_threshold = float(value("DETECTION_MIN_CONFIDENCE") or 0.0)
    config.box_head.nms_threshold = float(value("DETECTION_NMS_THRESHOLD"))
    config.box_head.detections_per_image = int(value("DETECTION_MAX_INSTANCES"))
    config.validate(config.source or "model")
    return config

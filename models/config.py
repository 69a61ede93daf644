"""Model configuration: typed dataclasses loaded from YAML and validated on load.

Every semantic choice of the model (normalisation, resize rule, anchor sizes, NMS thresholds,
RoIAlign sampling, box coder weights, ...) is a value here, so that the torchvision reference
model and the light default model differ only in their YAML files.

`from_dict` is generic over dataclasses and is reused by the pipeline's configuration: unknown
keys, wrong types and impossible values raise `ConfigError` with one line naming the key.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

CONFIG_VERSION = 1

# The embedded default model (configs/default_model.yaml and its trained weights): what a tool
# evaluates when no --config is given.
EMBEDDED_MODEL = Path(__file__).resolve().parents[1] / "configs" / "default_model.yaml"
EMBEDDED_WEIGHTS = EMBEDDED_MODEL.with_suffix(".npz")


def model_and_weights(config: str | None, weights: str | None) -> tuple[str, str | None]:
    """A tool's --config and --weights: without --config the embedded default model and, unless
    --weights says otherwise, its trained weights; with --config and no --weights, (config, None):
    the config's seeded random weights."""
    if config is None:
        return str(EMBEDDED_MODEL), weights or str(EMBEDDED_WEIGHTS)
    return config, weights


# The ResNet depths a backbone may have, and their residual blocks per stage (res2..res5).
RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
# The stages that have torchvision's semantics or the seed's (the second configuration, configs/seed_*.yaml).
CONVENTIONS = ("torchvision", "seed")
RESIZE_MODES = ("torchvision", "square")
PASTE_MODES = ("torchvision", "exact", "seed")
# The keys whose seed values put the model in the seed's normalised box frame of a molded square: all or none.
SEED_FRAME = {"input.resize": "square", "anchors.layout": "seed", "rpn.selection": "seed", "roi_align.method": "seed",
              "box_head.detection": "seed", "mask_head.paste": "seed"}


@dataclass
class InputConfig:
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    pixel_scale: float = 255.0   # pixels are divided by this before mean and std (the seed: 1, MEAN_PIXEL in 0..255)
    min_size: int = 800          # short side after resizing
    max_size: int = 1333         # long side at most
    size_divisible: int = 32     # padded size is a multiple of this
    # "torchvision": scale = min(min_size / short side, max_size / long side), bilinear in the graph, zero
    # padding at the bottom and right to size_divisible. "square": the seed's IMAGE_RESIZE_MODE square
    # (resize_image + mold_image): scale = max(1, min_size / short side), lowered so the long side fits
    # max_size, sides rounded; resized with scikit-image as the seed does and truncated to uint8; zero
    # padding centred to a max_size square; every frame of a batch molds to that one square.
    resize: str = "torchvision"

    def validate(self, path: str) -> None:
        require(len(self.mean) == 3 and len(self.std) == 3, path, "mean and std need 3 values")
        require(all(s > 0 for s in self.std), path + ".std", "must be positive")
        if self.resize == "square":   # IMAGE_MIN_DIM 0 does not upscale; it may exceed IMAGE_MAX_DIM, which caps
            require(self.min_size >= 0 and self.max_size > 0, path, "need min_size >= 0 and max_size > 0")
        else:
            require(0 < self.min_size <= self.max_size, path, "need 0 < min_size <= max_size")
        require(self.size_divisible in (32, 64, 128), path + ".size_divisible",
                 "must be 32, 64 or 128 (the coarsest feature stride)")
        require(self.pixel_scale > 0, path + ".pixel_scale", "must be positive")
        require(self.resize in RESIZE_MODES, path + ".resize", f"must be {' or '.join(RESIZE_MODES)}")
        require(self.resize != "square" or self.max_size % self.size_divisible == 0, path + ".max_size",
                "the square's side must be a multiple of size_divisible")


@dataclass
class BackboneConfig:
    depth: int = 50              # ResNet depth: 18, 34, 50 or 101
    width: int = 64              # channels of the stem; stages have width * (1, 2, 4, 8) (x4 for bottlenecks)
    frozen_bn_eps: float = 1e-5  # of the batch norms the converters fold (the seed's Keras BatchNormalization: 1e-3)
    trainable_stages: int = 3    # training only: how many of the last stages (of 5: stem, res2..res5) train
    stride_in_1x1: bool = False  # a stage's stride on its first bottleneck's 1x1 conv (ResNet v1: the seed's
                                 # conv_block, res*a_branch2a) instead of the 3x3 (v1.5: torchvision)
    stem_pool: str = "symmetric"  # the stem's 3x3/2 max-pool padded 1 on every side (torchvision), or
                                  # "same": TensorFlow's SAME, bottom and right only (the seed's MaxPooling2D)

    def validate(self, path: str) -> None:
        require(self.depth in RESNET_BLOCKS, path + ".depth", "must be 18, 34, 50 or 101")
        require(self.width >= 8 and self.width % 8 == 0, path + ".width", "must be a multiple of 8")
        require(0 <= self.trainable_stages <= 5, path + ".trainable_stages", "must be in 0..5")
        require(self.stem_pool in ("symmetric", "same"), path + ".stem_pool", "must be symmetric or same")


@dataclass
class FPNConfig:
    channels: int = 256

    def validate(self, path: str) -> None:
        require(self.channels > 0, path + ".channels", "must be positive")


@dataclass
class AnchorConfig:
    sizes: list[float] = field(default_factory=lambda: [32, 64, 128, 256, 512])  # one per level P2..P6
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # height / width (layout seed: w / h)
    # "torchvision": AnchorGenerator, pixels of the padded image, sizes rounded. "seed": the seed's
    # generate_anchors + norm_boxes: ratios are width / height (RPN_ANCHOR_RATIOS), centres at cell x stride
    # (BACKBONE_STRIDES), nothing rounded, then normalised to (y1, x1, y2 - 1, x2 - 1) / (side - 1): every
    # box of the seed's graph is in that normalised frame of the molded square.
    layout: str = "torchvision"

    def validate(self, path: str) -> None:
        require(len(self.sizes) == 5, path + ".sizes", "needs one size per level P2..P6 (5 values)")
        require(all(r > 0 for r in self.aspect_ratios), path + ".aspect_ratios", "must be positive")
        require(self.layout in CONVENTIONS, path + ".layout", f"must be {' or '.join(CONVENTIONS)}")


@dataclass
class RPNConfig:
    conv_depth: int = 1               # 3x3 conv + ReLU layers before the predictors (torchvision v2: 2)
    conv_channels: int | None = None  # their output channels; null: fpn.channels (the seed's rpn_conv_shared: 512)
    objectness: str = "sigmoid"       # one logit per anchor, or "softmax": two, background and object (rpn_class_raw)
    # "torchvision": top pre_nms_top_n per level by logit, decode, clip, drop tiny boxes, NMS per level, best
    # post_nms_top_n. "seed": the seed's ProposalLayer: one top PRE_NMS_LIMIT (pre_nms_top_n_test) over all
    # levels by probability, decode, clip to the square, one NMS at RPN_NMS_THRESHOLD to
    # POST_NMS_ROIS_INFERENCE (post_nms_top_n_test), zero boxes as padding that the heads still classify.
    selection: str = "torchvision"
    box_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])  # the seed: 1 / RPN_BBOX_STD_DEV
    pre_nms_top_n_test: int = 1000    # per level
    post_nms_top_n_test: int = 1000   # per image
    pre_nms_top_n_train: int = 2000
    post_nms_top_n_train: int = 2000
    nms_threshold: float = 0.7
    min_size: float = 1e-3
    # training targets
    fg_iou_threshold: float = 0.7
    bg_iou_threshold: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    smooth_l1_beta: float = 1.0 / 9   # the box loss is quadratic below this, linear above (torchvision's 1/9)

    def validate(self, path: str) -> None:
        require(len(self.box_weights) == 4, path + ".box_weights", "needs 4 values")
        require(self.conv_depth >= 1, path + ".conv_depth", "must be at least 1")
        require(self.conv_channels is None or self.conv_channels > 0, path + ".conv_channels",
                "must be positive (or null: fpn.channels)")
        require(0 < self.nms_threshold <= 1, path + ".nms_threshold", "must be in (0, 1]")
        require(self.pre_nms_top_n_test > 0 and self.post_nms_top_n_test > 0, path, "top_n must be positive")
        require(self.bg_iou_threshold <= self.fg_iou_threshold, path, "bg_iou_threshold > fg_iou_threshold")
        require(self.smooth_l1_beta > 0, path + ".smooth_l1_beta", "must be positive")
        require(self.objectness in ("sigmoid", "softmax"), path + ".objectness", "must be sigmoid or softmax")
        require(self.selection in CONVENTIONS, path + ".selection", f"must be {' or '.join(CONVENTIONS)}")


@dataclass
class RoIAlignConfig:
    box_output_size: int = 7
    mask_output_size: int = 14
    sampling_ratio: int = 2
    aligned: bool = False        # True: half-pixel offset (detectron2's ROIAlignV2)
    canonical_scale: float = 224.0
    canonical_level: int = 4
    level_eps: float = 1e-6
    # "torchvision": level floor(canonical_level + log2(sqrt(area) / canonical_scale) + level_eps), bins averaging
    # sampling_ratio^2 samples. "seed": the seed's PyramidROIAlign: level canonical_level + round(log2(sqrt(h w) /
    # (canonical_scale / sqrt(image area)))) (half to even), one crop_and_resize per level on the unpadded map
    # with the normalised boxes (one sample per cell, corners on the box's edges; sampling_ratio, aligned and
    # level_eps unused).
    method: str = "torchvision"

    def validate(self, path: str) -> None:
        require(self.sampling_ratio > 0, path + ".sampling_ratio", "must be positive (adaptive is not supported)")
        require(self.method in CONVENTIONS, path + ".method", f"must be {' or '.join(CONVENTIONS)}")
        require(self.box_output_size > 0 and self.mask_output_size > 0, path, "output sizes must be positive")


@dataclass
class BoxHeadConfig:
    conv_dims: list[int] = field(default_factory=list)  # 3x3 convs + ReLU before the FC layers (v2: 4 x 256)
    fc_layers: int = 2           # FC layers of fc_dim + ReLU (v1: fc6, fc7; v2: one)
    fc_dim: int = 1024
    box_weights: list[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])  # the seed: 1 / BBOX_STD_DEV
    score_threshold: float = 0.05    # the seed: DETECTION_MIN_CONFIDENCE
    nms_threshold: float = 0.5       # the seed: DETECTION_NMS_THRESHOLD
    detections_per_image: int = 100  # the seed: DETECTION_MAX_INSTANCES
    # The class names to detect (a subset of class_names); the others are dropped before NMS and the
    # per-image cap, so their boxes, masks and NMS cost nothing. null: every class.
    classes: list[str] | None = None
    # "torchvision": every class's decoded box of every RoI with a score > score_threshold, per-class NMS,
    # the best detections_per_image. "seed": the seed's DetectionLayer: one class per RoI (the argmax over
    # all classes, background included; background RoIs dropped), its score >= score_threshold (0: no
    # filter), that class's deltas, the box clipped to the frame's window in the square, per-class NMS, the
    # best detections_per_image (ties: the lower RoI).
    detection: str = "torchvision"
    min_size: float = 1e-2
    # training
    fg_iou_threshold: float = 0.5
    bg_iou_threshold: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    smooth_l1_beta: float = 1.0 / 9

    def validate(self, path: str) -> None:
        require(len(self.box_weights) == 4, path + ".box_weights", "needs 4 values")
        require(self.fc_layers >= 1, path + ".fc_layers", "must be at least 1")
        require(all(d > 0 for d in self.conv_dims), path + ".conv_dims", "must be positive")
        require(0 <= self.score_threshold < 1, path + ".score_threshold", "must be in [0, 1)")
        require(self.detections_per_image > 0, path + ".detections_per_image", "must be positive")
        require(self.smooth_l1_beta > 0, path + ".smooth_l1_beta", "must be positive")
        require(self.detection in CONVENTIONS, path + ".detection", f"must be {' or '.join(CONVENTIONS)}")


@dataclass
class MaskHeadConfig:
    conv_dims: list[int] = field(default_factory=lambda: [256, 256, 256, 256])
    threshold: float = 0.5       # mask probability at which a pixel belongs to the instance
    paste_padding: int = 1       # torchvision pastes a 1-pixel zero-padded mask
    # "torchvision" (bit parity), "exact" (sub-pixel, see models/postprocess.py), or "seed": the seed's
    # unmold_detections + unmold_mask: boxes out of the window to whole pixels, the mask resized to its box
    # with scikit-image as the seed does, pixels >= threshold.
    paste: str = "torchvision"
    deconvs: int = 1             # 2x transposed convs: masks are mask_output_size * 2**deconvs square

    def validate(self, path: str) -> None:
        require(len(self.conv_dims) >= 1, path + ".conv_dims", "needs at least one conv")
        require(0 < self.threshold < 1, path + ".threshold", "must be in (0, 1)")
        require(self.paste in PASTE_MODES, path + ".paste", f"must be {', '.join(PASTE_MODES)}")
        require(1 <= self.deconvs <= 3, path + ".deconvs", "must be 1, 2 or 3")


@dataclass
class TrainConfig:
    """How `python -m models.training.train` trains this model (ignored at inference)."""
    steps: int = 1000
    batch_size: int = 2
    optimizer: str = "adamw"     # adamw or sgd (with momentum)
    learning_rate: float = 1e-3
    momentum: float = 0.9        # sgd
    adam_beta1: float = 0.9      # adamw: decay of the gradient's running mean
    adam_beta2: float = 0.999    # adamw: decay of the squared gradient's running mean
    adam_epsilon: float = 1e-8   # adamw: added to the root of the second moment
    weight_decay: float = 1e-4   # kernels only: decoupled for adamw, added to the gradient for sgd
    warmup_steps: int = 100
    clip_norm: float = 10.0      # global gradient norm clip (0: off)
    scale_jitter: list[float] = field(default_factory=lambda: [0.8, 1.2])  # of min_size, per image
    flip: bool = True
    max_instances: int = 64      # ground truth per image (the largest kept)
    mini_mask_size: int | None = None  # side of the stored ground-truth masks; None: twice the mask size, at least 56
    checkpoint_every: int = 200
    seed: int = 0
    deterministic: bool = False  # TensorFlow's deterministic kernels (process-wide): bit-reproducible runs, slower

    def validate(self, path: str) -> None:
        require(self.steps > 0 and self.batch_size > 0, path, "steps and batch_size must be positive")
        require(self.optimizer in ("adamw", "sgd"), path + ".optimizer", "must be adamw or sgd")
        require(self.learning_rate > 0, path + ".learning_rate", "must be positive")
        require(len(self.scale_jitter) == 2 and 0 < self.scale_jitter[0] <= self.scale_jitter[1],
                 path + ".scale_jitter", "needs [low, high] with 0 < low <= high")
        require(self.max_instances > 0, path + ".max_instances", "must be positive")
        require(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, path, "adam_beta1 and adam_beta2 must be in [0, 1)")
        require(self.adam_epsilon > 0, path + ".adam_epsilon", "must be positive")
        require(self.mini_mask_size is None or self.mini_mask_size >= 8, path + ".mini_mask_size",
                "must be at least 8 (or null: twice the mask size, at least 56)")


@dataclass
class ModelConfig:
    version: int = CONFIG_VERSION  # of this file's format; a file of another version is refused
    name: str = "maskrcnn"
    class_names: list[str] = field(default_factory=lambda: ["__background__", "object"])  # index = class id
    box_xform_clip: float = math.log(1000.0 / 16)  # torchvision's box coding only
    # "torchvision": BoxCoder (deltas / box_weights, dw and dh clamped at box_xform_clip, centre +- half size).
    # "seed": the seed's apply_box_deltas_graph (deltas x 1 / box_weights, its *BBOX_STD_DEV; y2 = y1 + height).
    box_coding: str = "torchvision"
    precision: str = "float32"   # float32 or bfloat16 (mixed: bf16 compute, f32 outputs)
    input: InputConfig = field(default_factory=InputConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_align: RoIAlignConfig = field(default_factory=RoIAlignConfig)
    box_head: BoxHeadConfig = field(default_factory=BoxHeadConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # The YAML file this configuration was read from (None when built from a mapping). A plain
    # attribute, not a field: it is where the values came from, not one of them (to_dict leaves it out).
    source = None

    @property
    def num_classes(self) -> int:
        """Number of classes including the background (class id 0)."""
        return len(self.class_names)

    @property
    def mask_size(self) -> int:
        """Side of the predicted masks (28 for the paper's 14x14 RoIAlign and one 2x deconv)."""
        return self.roi_align.mask_output_size * 2 ** self.mask_head.deconvs

    def validate(self, path: str = "model") -> None:
        check_version(self.version, path)
        require(len(self.class_names) >= 2, path + ".class_names", "needs the background and at least one class")
        require(self.precision in ("float32", "bfloat16"), path + ".precision", "must be float32 or bfloat16")
        require(self.box_coding in CONVENTIONS, path + ".box_coding", f"must be {' or '.join(CONVENTIONS)}")
        validate_sections(self, path)
        check_classes(self.box_head.classes, self.class_names, path + ".box_head.classes", config_name(self))
        # The stages that work in the seed's normalised frame of the molded square come together.
        frame = {key: value == SEED_FRAME[key] for key, value in seed_frame_values(self).items()}
        if any(frame.values()) and not all(frame.values()):
            first = next(key for key, seed in frame.items() if seed)
            other = next(key for key, seed in frame.items() if not seed)
            require(False, f"{path}.{other}", f"must be {SEED_FRAME[other]} with {first} {SEED_FRAME[first]} "
                    "(the seed's normalised box frame)")

    @property
    def detected_class_ids(self) -> tuple[int, ...] | None:
        """The class ids of `box_head.classes` in class id order, or None for every class."""
        if self.box_head.classes is None:
            return None
        return tuple(i for i, name in enumerate(self.class_names) if i > 0 and name in self.box_head.classes)

    @property
    def seed_frame(self) -> bool:
        """Whether the model works in the seed's normalised box frame of a molded square (SEED_FRAME)."""
        return self.input.resize == "square"

    @property
    def trainable(self) -> str | None:
        """None when `models.training` can train this configuration, else the key that it cannot."""
        if self.seed_frame:
            return "input.resize square (the seed's normalised box frame)"
        if self.rpn.objectness != "sigmoid":
            return f"rpn.objectness {self.rpn.objectness}"
        if self.box_coding != "torchvision":
            return f"box_coding {self.box_coding}"
        return None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_name(config: ModelConfig) -> str:
    """How messages name a configuration: its file, else its name."""
    return config.source or f"the configuration {config.name}"


def check_classes(classes: list[str] | None, class_names: list[str], path: str, model: str) -> None:
    """ConfigError naming `path` unless every name in `classes` is a class of the model (`class_names`,
    background first): suggests the nearest name, else lists the model's classes."""
    if classes is None:
        return
    require(len(classes) > 0, path, "needs at least one class name (null: every class)")
    known = list(class_names[1:])
    for name in classes:
        if name not in known:
            near = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
            hint = f"did you mean {near[0]!r}?" if near else "its classes: " + ", ".join(known[:12]) + (
                f", ... ({len(known)} in all)" if len(known) > 12 else "")
            require(False, path, f"{name!r} is not a class of {model} ({hint})")


def seed_frame_values(config: ModelConfig) -> dict[str, str]:
    """The values of the keys of SEED_FRAME in `config`."""
    return {"input.resize": config.input.resize, "anchors.layout": config.anchors.layout,
            "rpn.selection": config.rpn.selection, "roi_align.method": config.roi_align.method,
            "box_head.detection": config.box_head.detection, "mask_head.paste": config.mask_head.paste}


_EXPONENT_FLOAT = re.compile(r"[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+")


def require(ok: bool, path: str, problem: str) -> None:
    """ConfigError("path: problem") unless `ok`: how every section's validate() states a rule."""
    if not ok:
        raise ConfigError(f"{path}: {problem}")


def validate_sections(config, path: str) -> None:
    """Call validate(f"{path}.{name}") on every field of dataclass `config` that is itself a section."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value.validate(f"{path}.{f.name}")


def check_version(version: int, path: str) -> None:
    """The `version` key of a configuration file: only this code's CONFIG_VERSION is understood."""
    require(version == CONFIG_VERSION, path + ".version",
            f"is {version}; this maskstream reads version {CONFIG_VERSION} configurations")


def from_dict(cls, data: Any, path: str):
    """Build dataclass `cls` from a mapping, checking keys and value types (recursively).

    Raises ConfigError("path.key: problem") for an unknown key or a value of the wrong type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{path}.{key}: unknown key (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(hints[key], value, f"{path}.{key}")
    return cls(**kwargs)


def _coerce(hint, value, path: str):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: unexpected value {value!r}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 (PyYAML) reads `1e-4` as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing file or a syntax error is one ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def set_dotted(data: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` override to a nested mapping; the value is parsed as YAML."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment}: expected key=value, for example train.steps=100")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment}: {'.'.join(parts[:i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(source: str | Path | dict | ModelConfig, overrides: list[str] = ()) -> ModelConfig:
    """A validated ModelConfig from a YAML path, a mapping, or a ModelConfig.

    `overrides` are `section.key=value` assignments (see set_dotted) laid over a YAML or a mapping.
    """
    if isinstance(source, ModelConfig):
        if overrides:
            raise ConfigError("model: overrides apply to a YAML file or a mapping, not a built config")
        config = source
        where = "model"
    elif isinstance(source, dict):
        data = copy.deepcopy(source)
        for override in overrides:
            set_dotted(data, override)
        config = from_dict(ModelConfig, data, "model")
        where = "model"
    else:
        where = str(source)
        data = read_yaml(source)
        data = data.get("model", data) if isinstance(data.get("model"), dict) else data
        for override in overrides:
            set_dotted(data, override)
        config = from_dict(ModelConfig, data, where)
        config.source = where
    config.validate(where)
    return config

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
# The ResNet depths a backbone may have, and their residual blocks per stage (res2..res5).
RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


@dataclass
class InputConfig:
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    min_size: int = 800          # short side after resizing
    max_size: int = 1333         # long side at most
    size_divisible: int = 32     # padded size is a multiple of this

    def validate(self, path: str) -> None:
        require(len(self.mean) == 3 and len(self.std) == 3, path, "mean and std need 3 values")
        require(all(s > 0 for s in self.std), path + ".std", "must be positive")
        require(0 < self.min_size <= self.max_size, path, "need 0 < min_size <= max_size")
        require(self.size_divisible in (32, 64, 128), path + ".size_divisible",
                 "must be 32, 64 or 128 (the coarsest feature stride)")


@dataclass
class BackboneConfig:
    depth: int = 50              # ResNet depth: 18, 34, 50 or 101
    width: int = 64              # channels of the stem; stages have width * (1, 2, 4, 8) (x4 for bottlenecks)
    frozen_bn_eps: float = 1e-5
    trainable_stages: int = 3    # training only: how many of the last stages (of 5: stem, res2..res5) train

    def validate(self, path: str) -> None:
        require(self.depth in RESNET_BLOCKS, path + ".depth", "must be 18, 34, 50 or 101")
        require(self.width >= 8 and self.width % 8 == 0, path + ".width", "must be a multiple of 8")
        require(0 <= self.trainable_stages <= 5, path + ".trainable_stages", "must be in 0..5")


@dataclass
class FPNConfig:
    channels: int = 256

    def validate(self, path: str) -> None:
        require(self.channels > 0, path + ".channels", "must be positive")


@dataclass
class AnchorConfig:
    sizes: list[float] = field(default_factory=lambda: [32, 64, 128, 256, 512])  # one per level P2..P6
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # height / width

    def validate(self, path: str) -> None:
        require(len(self.sizes) == 5, path + ".sizes", "needs one size per level P2..P6 (5 values)")
        require(all(r > 0 for r in self.aspect_ratios), path + ".aspect_ratios", "must be positive")


@dataclass
class RPNConfig:
    conv_depth: int = 1               # 3x3 conv + ReLU layers before the predictors (torchvision v2: 2)
    conv_channels: int | None = None  # their output channels; null: fpn.channels (the seed's rpn_conv_shared: 512)
    box_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
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


@dataclass
class RoIAlignConfig:
    box_output_size: int = 7
    mask_output_size: int = 14
    sampling_ratio: int = 2
    aligned: bool = False        # True: half-pixel offset (detectron2's ROIAlignV2)
    canonical_scale: float = 224.0
    canonical_level: int = 4
    level_eps: float = 1e-6

    def validate(self, path: str) -> None:
        require(self.sampling_ratio > 0, path + ".sampling_ratio", "must be positive (adaptive is not supported)")
        require(self.box_output_size > 0 and self.mask_output_size > 0, path, "output sizes must be positive")


@dataclass
class BoxHeadConfig:
    conv_dims: list[int] = field(default_factory=list)  # 3x3 convs + ReLU before the FC layers (torchvision v2: 4 x 256)
    fc_layers: int = 2           # FC layers of fc_dim + ReLU (v1: fc6, fc7; v2: one)
    fc_dim: int = 1024
    box_weights: list[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
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


@dataclass
class MaskHeadConfig:
    conv_dims: list[int] = field(default_factory=lambda: [256, 256, 256, 256])
    threshold: float = 0.5       # mask probability at which a pixel belongs to the instance
    paste_padding: int = 1       # torchvision pastes a 1-pixel zero-padded mask
    paste: str = "torchvision"   # "torchvision" (bit parity) or "exact" (sub-pixel, see models/postprocess.py)
    deconvs: int = 1             # 2x transposed convs: masks are mask_output_size * 2**deconvs square

    def validate(self, path: str) -> None:
        require(len(self.conv_dims) >= 1, path + ".conv_dims", "needs at least one conv")
        require(0 < self.threshold < 1, path + ".threshold", "must be in (0, 1)")
        require(self.paste in ("torchvision", "exact"), path + ".paste", "must be torchvision or exact")
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
    box_xform_clip: float = math.log(1000.0 / 16)
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
        validate_sections(self, path)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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

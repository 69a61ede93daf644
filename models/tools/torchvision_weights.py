"""Random but deterministic torchvision Mask R-CNN state dicts, in pure numpy (no torch).

`make_state_dict(depth, num_classes, seed, arch)` returns, in torchvision's own key order, exactly the
keys, shapes and dtypes of the state dict of

  arch "v1" (depths 18, 34, 50 and 101):
    MaskRCNN(resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=None, trainable_layers=3),
             num_classes=num_classes)
    Its batch norms are `FrozenBatchNorm2d`, as in torchvision's published COCO checkpoint, so there
    is no `num_batches_tracked`: `maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)` builds
    trainable `BatchNorm2d` layers instead and its state dict has the same keys plus one int64
    `num_batches_tracked` per batch norm (tests/test_torchvision_weights.py checks both).
  arch "v2" (depth 50 only):
    maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=num_classes)
    `BatchNorm2d` everywhere (so one int64 `num_batches_tracked` per batch norm): in the ResNet-50,
    after each FPN conv (whose convs then have no bias), after each of the box head's four 3x3 convs
    (`FastRCNNConvFCHead`, then one FC) and of the mask head's four; the RPN head has two 3x3 convs
    (with bias, no norm).

Values (float32, one numpy Generator, in key order): conv kernels He-normal (std sqrt(2 / fan_in)),
linear weights N(0, 0.01) like a detection predictor, every bias N(0, 0.01) (not zero, so that a
dropped bias shows up in a parity test), batch-norm weight N(1, 0.1) and bias N(0, 0.1) (not 1 and
0, so that a batch norm folded without its affine part shows up too), running mean 0, running
variance 1 and num_batches_tracked 0 (int64). These are not torch's own initialisations (kaiming
uniform, N(0, 0.01) for RPN convs, fan-out kaiming for head convs, zero biases, batch norm 1 and 0):
the values are made here and loaded into torchvision, so torch's random stream never matters, and
the reference conditioning (bench/torchvision_reference.py) resets every batch norm's statistics
and rescales the predictors anyway.

`reference_state_dict(npz)` rebuilds the exact state dict behind a reference file written by
bench/torchvision_reference.py: `make_state_dict` from its seed, plus its conditioning overrides.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
ANCHORS_PER_LOCATION = 3
FPN_CHANNELS = 256
FC_DIM = 1024
MASK_CONV_DIMS = (256, 256, 256, 256)
BOX_HEAD_CONV_DIMS = (256, 256, 256, 256)   # v2's FastRCNNConvFCHead
RPN_CONV_DEPTH = {"v1": 1, "v2": 2}
ARCHES = ("v1", "v2")
OVERRIDE_PREFIX = "override/"


def _conv(shapes: dict, name: str, cout: int, cin: int, kernel: int, bias: bool = True) -> None:
    shapes[f"{name}.weight"] = ("conv", (cout, cin, kernel, kernel))
    if bias:
        shapes[f"{name}.bias"] = ("bias", (cout,))


def _batch_norm(shapes: dict, name: str, channels: int, tracked: bool) -> None:
    """FrozenBatchNorm2d (tracked False) or BatchNorm2d (tracked True: plus num_batches_tracked)."""
    for field in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{name}.{field}"] = ("bn_" + field, (channels,))
    if tracked:
        shapes[f"{name}.num_batches_tracked"] = ("bn_num_batches_tracked", ())


def _conv_bn(shapes: dict, name: str, cout: int, cin: int, kernel: int) -> None:
    """torchvision's Conv2dNormActivation with a BatchNorm2d: `name.0` conv without bias, `name.1` norm."""
    _conv(shapes, f"{name}.0", cout, cin, kernel, bias=False)
    _batch_norm(shapes, f"{name}.1", cout, tracked=True)


def _linear(shapes: dict, name: str, cout: int, cin: int) -> None:
    shapes[f"{name}.weight"] = ("linear", (cout, cin))
    shapes[f"{name}.bias"] = ("bias", (cout,))


def _resnet_body(shapes: dict, depth: int, tracked: bool) -> list[int]:
    """Add the ResNet body's entries; return the output channels of layer1..layer4."""
    prefix = "backbone.body"
    _conv(shapes, f"{prefix}.conv1", 64, 3, 7, bias=False)
    _batch_norm(shapes, f"{prefix}.bn1", 64, tracked)
    bottleneck = depth >= 50
    expansion = 4 if bottleneck else 1
    inplanes = 64
    stage_channels = []
    for stage, count in enumerate(RESNET_BLOCKS[depth]):
        planes = 64 * 2 ** stage
        for index in range(count):
            block = f"{prefix}.layer{stage + 1}.{index}"
            stride = 2 if stage > 0 and index == 0 else 1
            if bottleneck:
                convs = [(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
            else:
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            for number, (cout, cin, kernel) in enumerate(convs, start=1):
                _conv(shapes, f"{block}.conv{number}", cout, cin, kernel, bias=False)
                _batch_norm(shapes, f"{block}.bn{number}", cout, tracked)
            if index == 0 and (stride != 1 or inplanes != planes * expansion):
                _conv(shapes, f"{block}.downsample.0", planes * expansion, inplanes, 1, bias=False)
                _batch_norm(shapes, f"{block}.downsample.1", planes * expansion, tracked)
            inplanes = planes * expansion
        stage_channels.append(inplanes)
    return stage_channels


def state_dict_layout(depth: int = 50, num_classes: int = 91,
                      arch: str = "v1") -> dict[str, tuple[str, tuple[int, ...]]]:
    """Ordered {state-dict key: (kind, shape)} of torchvision's Mask R-CNN `arch` on a ResNet-`depth` FPN.

    kind is one of conv, linear, bias, bn_weight, bn_bias, bn_running_mean, bn_running_var,
    bn_num_batches_tracked.
    """
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {', '.join(ARCHES)}, got {arch}")
    if depth not in RESNET_BLOCKS or (arch == "v2" and depth != 50):
        allowed = [50] if arch == "v2" else sorted(RESNET_BLOCKS)
        raise ValueError(f"depth must be one of {allowed} for {arch}, got {depth}")
    v2 = arch == "v2"
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
    stage_channels = _resnet_body(shapes, depth, tracked=v2)
    for block, kernel in (("inner_blocks", 1), ("layer_blocks", 3)):
        for level, channels in enumerate(stage_channels):
            cin = channels if block == "inner_blocks" else FPN_CHANNELS
            if v2:
                _conv_bn(shapes, f"backbone.fpn.{block}.{level}", FPN_CHANNELS, cin, kernel)
            else:
                _conv(shapes, f"backbone.fpn.{block}.{level}.0", FPN_CHANNELS, cin, kernel)
    for index in range(RPN_CONV_DEPTH[arch]):
        _conv(shapes, f"rpn.head.conv.{index}.0", FPN_CHANNELS, FPN_CHANNELS, 3)
    _conv(shapes, "rpn.head.cls_logits", ANCHORS_PER_LOCATION, FPN_CHANNELS, 1)
    _conv(shapes, "rpn.head.bbox_pred", 4 * ANCHORS_PER_LOCATION, FPN_CHANNELS, 1)
    if v2:
        # FastRCNNConvFCHead: Sequential(4 x Conv2dNormActivation, Flatten, Linear, ReLU).
        cin = FPN_CHANNELS
        for index, cout in enumerate(BOX_HEAD_CONV_DIMS):
            _conv_bn(shapes, f"roi_heads.box_head.{index}", cout, cin, 3)
            cin = cout
        _linear(shapes, f"roi_heads.box_head.{len(BOX_HEAD_CONV_DIMS) + 1}", FC_DIM, cin * 7 * 7)
    else:
        _linear(shapes, "roi_heads.box_head.fc6", FC_DIM, FPN_CHANNELS * 7 * 7)
        _linear(shapes, "roi_heads.box_head.fc7", FC_DIM, FC_DIM)
    _linear(shapes, "roi_heads.box_predictor.cls_score", num_classes, FC_DIM)
    _linear(shapes, "roi_heads.box_predictor.bbox_pred", 4 * num_classes, FC_DIM)
    cin = FPN_CHANNELS
    for index, cout in enumerate(MASK_CONV_DIMS):
        if v2:
            _conv_bn(shapes, f"roi_heads.mask_head.{index}", cout, cin, 3)
        else:
            _conv(shapes, f"roi_heads.mask_head.{index}.0", cout, cin, 3)
        cin = cout
    # ConvTranspose2d stores its kernel as (in, out, kh, kw).
    _conv(shapes, "roi_heads.mask_predictor.conv5_mask", cin, cin, 2)
    _conv(shapes, "roi_heads.mask_predictor.mask_fcn_logits", num_classes, cin, 1)
    return shapes


def _fill(rng: np.random.Generator, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "bn_running_mean":
        return np.zeros(shape, np.float32)
    if kind == "bn_running_var":
        return np.ones(shape, np.float32)
    if kind == "bn_num_batches_tracked":
        return np.zeros(shape, np.int64)
    values = rng.standard_normal(shape, dtype=np.float32)
    if kind == "conv":
        values *= np.float32(np.sqrt(2.0 / np.prod(shape[1:])))
    elif kind in ("linear", "bias"):
        values *= np.float32(0.01)
    elif kind == "bn_weight":
        values *= np.float32(0.1)
        values += np.float32(1.0)
    elif kind == "bn_bias":
        values *= np.float32(0.1)
    else:
        raise ValueError(f"unknown parameter kind {kind}")
    return values


def make_state_dict(depth: int = 50, num_classes: int = 91, seed: int = 0, arch: str = "v1") -> dict[str, np.ndarray]:
    """A deterministic random state dict for torchvision's Mask R-CNN `arch` on a ResNet-`depth` FPN."""
    rng = np.random.default_rng(seed)
    return {key: _fill(rng, kind, shape) for key, (kind, shape) in state_dict_layout(depth, num_classes, arch).items()}


def reference_state_dict(npz_path: str | Path) -> dict[str, np.ndarray]:
    """The exact state dict a torchvision reference file was made with: seeded weights + overrides.

    A file without `arch` is a v1 reference (written before v2 existed)."""
    with np.load(npz_path) as reference:
        arch = str(reference["arch"]) if "arch" in reference.files else "v1"
        state = make_state_dict(int(reference["depth"]), int(reference["num_classes"]), int(reference["seed"]), arch)
        for name in reference.files:
            if name.startswith(OVERRIDE_PREFIX):
                key = name[len(OVERRIDE_PREFIX):]
                if key not in state or state[key].shape != reference[name].shape:
                    raise ValueError(f"{npz_path}: override {key} does not fit the state dict")
                state[key] = reference[name]
    return state

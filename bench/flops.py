"""Analytic FLOP count of the Mask R-CNN a config YAML defines, per stage, for one frame size.

    python bench/flops.py configs/coco_r50_fpn.yaml --width 1280 --height 720 --detections 100

Pure Python: no TensorFlow, no torch. The config is read by `models.config` and the frame sizes come
from `models.image_size` (both pure Python), so defaults, validation and the resize rule are the
model's own. FLOPs = 2 x multiply-adds of the convolutions and fully connected layers:

- the frame is resized as the model does (`models.image_size.input_sizes`: torchvision's rule, padded
  to a multiple of size_divisible, or the seed's square): the network runs on the padded size;
- backbone: the ResNet stem and every residual block (v1.5: the stride on the 3x3 conv), downsample
  projections included; frozen batch norm is folded into the convs (no multiply-adds of its own);
- FPN: one 1x1 lateral and one 3x3 output conv per level C2..C5 (P6 is a max-pool: free);
- RPN head: its 3x3 conv(s) (v2: two; the seed's of 512 channels) and the 1x1 objectness (the seed's: two
  logits per anchor) and delta convs on P2..P6;
- box head: the 3x3 convs (v2: four), the FC layers (fc6, fc7; v2: one), the classifier and the box
  regressor over rpn.post_nms_top_n_test RoIs;
- mask head: the 3x3 convs, the 2x2 stride-2 transposed conv and the 1x1 logits conv per detection.
Left out, all below 0.5% of the total: RoIAlign's bilinear taps (1000 RoIs x 49 bins x 4 samples x
256 channels x 4 taps = 0.4 GFLOP, masks 0.2), max-pools, ReLUs, residual adds, the upsample-and-add
of the FPN, box decoding, NMS and mask pasting (these cost time on a CPU, not FLOPs).

coco_r50_fpn at 1280x720 (padded input 768x1344, 1000 RoIs, 100 detections):
    backbone 168.2, FPN 116.9, RPN head 102.0, box head 28.7, mask head 106.4 (1.06 per detection),
    total 522.2 GFLOP (415.8 without the mask head).
DESIGN.md says "roughly 400 (backbone ~170, FPN ~60, RPN head ~50, box head ~28, mask head ~1 per
detection)". The backbone, box head and per-detection mask head agree; its FPN and RPN head figures are
the multiply-add counts (58.5 and 51.0 GMAC), i.e. half the FLOPs. Counted consistently the frame is
~522 GFLOP, so the float32 floor at 395 GFLOP/s is ~1.32 s per frame, not ~1 s.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.config import RESNET_BLOCKS, load_config  # noqa: E402  (pure Python: models/__init__ imports lazily)
from models.image_size import input_sizes  # noqa: E402

STAGES = ("backbone", "fpn", "rpn_head", "box_head", "mask_head")


class Feature(NamedTuple):
    """A feature map of one frame: height, width, channels."""
    height: int
    width: int
    channels: int


def conv(x: Feature, cout: int, kernel: int, stride: int = 1) -> tuple[Feature, int]:
    """A kernel x kernel conv with padding kernel // 2: (output feature, multiply-adds)."""
    pad = kernel // 2
    out = Feature((x.height + 2 * pad - kernel) // stride + 1, (x.width + 2 * pad - kernel) // stride + 1, cout)
    return out, out.height * out.width * cout * x.channels * kernel * kernel


def halve(x: Feature) -> Feature:
    """Output of a kernel-3 stride-2 pool with padding 1 (the stem's max-pool)."""
    return Feature((x.height - 1) // 2 + 1, (x.width - 1) // 2 + 1, x.channels)


def residual_block(x: Feature, planes: int, stride: int, bottleneck: bool,
                   stride_in_1x1: bool = False) -> tuple[Feature, int]:
    """One ResNet block (basic, or bottleneck with the stride on the 3x3 (v1.5) or on the first 1x1 (v1,
    the seed's)), with its projection when the shape changes."""
    if bottleneck:
        y, m1 = conv(x, planes, 1, stride if stride_in_1x1 else 1)
        y, m2 = conv(y, planes, 3, 1 if stride_in_1x1 else stride)
        y, m3 = conv(y, planes * 4, 1)
        macs = m1 + m2 + m3
    else:
        y, m1 = conv(x, planes, 3, stride)
        y, m2 = conv(y, planes, 3)
        macs = m1 + m2
    if stride != 1 or x.channels != y.channels:
        macs += conv(x, y.channels, 1, stride)[1]
    return y, macs


def backbone_macs(image: Feature, depth: int, width: int, stride_in_1x1: bool = False) -> tuple[int, list[Feature]]:
    """Multiply-adds of the ResNet and its outputs C2..C5."""
    x, macs = conv(image, width, 7, stride=2)
    x = halve(x)
    outputs = []
    for stage, count in enumerate(RESNET_BLOCKS[depth]):
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            x, block_macs = residual_block(x, width * 2 ** stage, stride, depth >= 50, stride_in_1x1)
            macs += block_macs
        outputs.append(x)
    return macs, outputs


def fpn_macs(stages: list[Feature], channels: int) -> tuple[int, list[Feature]]:
    """Multiply-adds of the FPN and its outputs P2..P6 (P6: kernel-1 stride-2 max-pool of P5)."""
    macs, levels = 0, []
    for c in stages:
        lateral, lateral_macs = conv(c, channels, 1)
        level, output_macs = conv(lateral, channels, 3)
        macs += lateral_macs + output_macs
        levels.append(level)
    p5 = levels[-1]
    levels.append(Feature((p5.height - 1) // 2 + 1, (p5.width - 1) // 2 + 1, channels))
    return macs, levels


def rpn_head_macs(levels: list[Feature], anchors_per_location: int, depth: int = 1, hidden: int | None = None,
                  logits_per_anchor: int = 1) -> int:
    """`depth` 3x3 convs of `hidden` channels (default: the level's), then the objectness and delta convs, per level."""
    macs = 0
    for level in levels:
        x = level
        for _ in range(depth):
            x, conv_macs = conv(x, hidden or level.channels, 3)
            macs += conv_macs
        macs += conv(x, logits_per_anchor * anchors_per_location, 1)[1] + conv(x, 4 * anchors_per_location, 1)[1]
    return macs


def box_head_macs(rois: int, channels: int, pool: int, fc_dim: int, num_classes: int, conv_dims: list[int] = (),
                  fc_layers: int = 2) -> int:
    """Per RoI: the 3x3 convs (v2), the FC layers (the first on the flattened pool x pool features), the predictors."""
    x, per_roi = Feature(pool, pool, channels), 0
    for dim in conv_dims:
        x, conv_macs = conv(x, dim, 3)
        per_roi += conv_macs
    fin = x.height * x.width * x.channels
    for _ in range(fc_layers):
        per_roi += fin * fc_dim
        fin = fc_dim
    per_roi += fc_dim * num_classes + fc_dim * 4 * num_classes
    return rois * per_roi


def mask_head_macs(detections: int, channels: int, pool: int, conv_dims: list[int], num_classes: int,
                   deconvs: int = 1) -> int:
    x, macs = Feature(pool, pool, channels), 0
    for dim in conv_dims:
        x, conv_macs = conv(x, dim, 3)
        macs += conv_macs
    for _ in range(deconvs):
        # 2x2 stride-2 transposed conv: every input pixel feeds a 2x2 block of outputs.
        macs += x.height * x.width * x.channels * x.channels * 4
        x = Feature(2 * x.height, 2 * x.width, x.channels)
    macs += conv(x, num_classes, 1)[1]
    return detections * macs


def count_flops(config: str | Path | dict, width: int, height: int, detections: int = 100) -> dict:
    """FLOPs (2 x multiply-adds) per stage for one width x height frame through the config's model
    (a config YAML path, or a mapping such as a loaded model's `config.to_dict()`).

    Returns {"resized": (h, w), "padded": (H, W), "proposals": R, "detections": D,
             "stages": {stage: FLOPs for each of STAGES}, "total": FLOPs}.
    """
    cfg = load_config(config)
    resized, padded = input_sizes(height, width, cfg.input)
    image = Feature(padded[0], padded[1], 3)
    channels = cfg.fpn.channels
    backbone, stages = backbone_macs(image, cfg.backbone.depth, cfg.backbone.width, cfg.backbone.stride_in_1x1)
    fpn, levels = fpn_macs(stages, channels)
    proposals = cfg.rpn.post_nms_top_n_test
    macs = {
        "backbone": backbone,
        "fpn": fpn,
        "rpn_head": rpn_head_macs(levels, len(cfg.anchors.aspect_ratios), cfg.rpn.conv_depth, cfg.rpn.conv_channels,
                                  2 if cfg.rpn.objectness == "softmax" else 1),
        "box_head": box_head_macs(proposals, channels, cfg.roi_align.box_output_size, cfg.box_head.fc_dim,
                                  cfg.num_classes, cfg.box_head.conv_dims, cfg.box_head.fc_layers),
        "mask_head": mask_head_macs(detections, channels, cfg.roi_align.mask_output_size, cfg.mask_head.conv_dims,
                                    cfg.num_classes, cfg.mask_head.deconvs),
    }
    flops = {stage: 2 * value for stage, value in macs.items()}
    return {"resized": resized, "padded": padded, "proposals": proposals, "detections": detections,
            "stages": flops, "total": sum(flops.values())}


def format_table(result: dict, gflops_per_second: float | None = None) -> str:
    """The per-stage table in GFLOP (and the share of the total), with the floor time if a rate is given."""
    lines = [f"input {result['resized'][0]}x{result['resized'][1]} padded to "
             f"{result['padded'][0]}x{result['padded'][1]}, {result['proposals']} RoIs, "
             f"{result['detections']} detections",
             f"{'stage':<10} {'GFLOP':>8} {'share':>6}"]
    for stage, flops in result["stages"].items():
        lines.append(f"{stage:<10} {flops / 1e9:>8.2f} {flops / result['total']:>6.1%}")
    lines.append(f"{'total':<10} {result['total'] / 1e9:>8.2f}")
    if gflops_per_second:
        lines.append(f"floor at {gflops_per_second:g} GFLOP/s: {result['total'] / 1e9 / gflops_per_second:.3f} s per frame")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--gflops-per-second", type=float, default=395.0,
                        help="machine rate for the floor time (DESIGN.md: ~395 in float32)")
    args = parser.parse_args(argv)
    print(format_table(count_flops(args.config, args.width, args.height, args.detections), args.gflops_per_second))


if __name__ == "__main__":
    main()

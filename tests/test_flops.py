"""bench/flops.py against counts done by hand, and the frame sizes it counts on (models.image_size)."""
from pathlib import Path

import pytest

from models.image_size import padded_size, resized_size
from tests.bench_helpers import load_bench

ROOT = Path(__file__).resolve().parents[1]
flops = load_bench("flops")

TINY_YAML = """
class_names: [__background__, a, b]
input: {min_size: 64, max_size: 64}
backbone: {depth: 18, width: 8}
fpn: {channels: 16}
rpn: {pre_nms_top_n_test: 10, post_nms_top_n_test: 10}
box_head: {fc_dim: 32}
mask_head: {conv_dims: [8]}
"""


def test_one_conv():
    # 10x12x3 input, 3x3 stride-2 conv to 5 channels: 5x6 outputs, each 3 * 9 multiply-adds per channel.
    out, macs = flops.conv(flops.Feature(10, 12, 3), 5, 3, stride=2)
    assert out == flops.Feature(5, 6, 5)
    assert macs == 5 * 6 * 5 * 3 * 9


@pytest.mark.parametrize("height, width, resized, padded", [
    (720, 1280, (749, 1333), (768, 1344)),      # long side limits: scale 1333 / 1280
    (1280, 720, (1333, 749), (1344, 768)),
    (480, 640, (800, 1066), (800, 1088)),       # short side sets the scale: 800 / 480
])
def test_resize_and_pad_like_torchvision(height, width, resized, padded):
    assert resized_size(height, width, 800, 1333) == resized
    assert padded_size(*resized, 32) == padded


def test_tiny_config_stage_by_stage(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_YAML)
    result = flops.count_flops(config, width=64, height=64, detections=5)
    assert result["padded"] == (64, 64)
    # ResNet-18 at width 8 on 64x64: stem 7x7/2 3->8 on 32x32 outputs; layer1 two blocks of two 3x3 8->8
    # convs on 16x16; layers 2-4 each: 3x3/2 conv, 3x3 conv, 1x1/2 projection, then a block of two 3x3
    # convs, on 8x8 (16 ch), 4x4 (32 ch), 2x2 (64 ch): each stage costs 73728 + 147456 + 8192 + 2 * 147456.
    stem = 32 * 32 * 8 * 3 * 49
    layer1 = 4 * 16 * 16 * 8 * 8 * 9
    layer_n = 8 * 8 * 16 * 8 * 9 + 3 * 8 * 8 * 16 * 16 * 9 + 8 * 8 * 16 * 8
    backbone = stem + layer1 + 3 * layer_n
    assert backbone == 3_366_912
    # FPN 16 channels: laterals from 8, 16, 32, 64 channels; 3x3 outputs on 256 + 64 + 16 + 4 positions.
    fpn = 256 * 16 * 8 + 64 * 16 * 16 + 16 * 16 * 32 + 4 * 16 * 64 + 340 * 16 * 16 * 9
    # RPN head on P2..P6 (P6 is 1x1): 3x3 16->16, then 3 objectness and 12 delta outputs.
    rpn = 341 * (16 * 16 * 9 + 16 * 3 + 16 * 12)
    # Box head over 10 RoIs: fc6 16*7*7 -> 32, fc7 32 -> 32, 3 classes, 12 deltas.
    box = 10 * (16 * 49 * 32 + 32 * 32 + 32 * 3 + 32 * 12)
    # Mask head per detection: 3x3 16->8 on 14x14, 2x2/2 transposed 8->8, 1x1 8->3 on 28x28.
    mask = 5 * (196 * 8 * 16 * 9 + 196 * 8 * 8 * 4 + 784 * 3 * 8)
    expected = {"backbone": backbone, "fpn": fpn, "rpn_head": rpn, "box_head": box, "mask_head": mask}
    assert result["stages"] == {stage: 2 * macs for stage, macs in expected.items()}
    assert result["total"] == 2 * (backbone + fpn + rpn + box + mask) == 13_638_112


def test_coco_r50_fpn_at_720p():
    result = flops.count_flops(ROOT / "configs" / "coco_r50_fpn.yaml", width=1280, height=720, detections=100)
    assert result["padded"] == (768, 1344) and result["proposals"] == 1000
    assert result["stages"]["box_head"] == 2 * 1000 * (12544 * 1024 + 1024 * 1024 + 1024 * 91 + 1024 * 364)
    mask_per_detection = 4 * 196 * 256 * 256 * 9 + 196 * 256 * 256 * 4 + 784 * 91 * 256
    assert result["stages"]["mask_head"] == 2 * 100 * mask_per_detection
    # ResNet-50's conv layers: 4.087 GMAC at 224x224 (without the classifier), scaled by pixel count.
    assert result["stages"]["backbone"] / 2 == pytest.approx(4.0868e9 * 768 * 1344 / 224 ** 2, rel=1e-3)


def test_v2_counts_the_second_rpn_conv_and_the_conv_box_head():
    v1 = flops.count_flops(ROOT / "configs" / "coco_r50_fpn.yaml", width=1280, height=720)
    v2 = flops.count_flops(ROOT / "configs" / "coco_r50_fpn_v2.yaml", width=1280, height=720)
    assert v2["stages"]["backbone"] == v1["stages"]["backbone"] and v2["stages"]["fpn"] == v1["stages"]["fpn"]
    # A second 3x3 256->256 conv on every position of P2..P6 (192x336, 96x168, 48x84, 24x42, 12x21).
    positions = 192 * 336 + 96 * 168 + 48 * 84 + 24 * 42 + 12 * 21
    assert v2["stages"]["rpn_head"] - v1["stages"]["rpn_head"] == 2 * positions * 256 * 256 * 9
    # Per RoI: four 3x3 256->256 convs on 7x7, one FC 12544 -> 1024 (no fc7), the same predictors.
    per_roi = 4 * 49 * 256 * 256 * 9 + 12544 * 1024 + 1024 * 91 + 1024 * 364
    assert v2["stages"]["box_head"] == 2 * 1000 * per_roi


def test_the_seed_counts_its_square_its_resnet_v1_and_its_rpn():
    seed = flops.count_flops(ROOT / "configs" / "seed_r50_coco.yaml", width=1280, height=720)
    assert seed["resized"] == (576, 1024) and seed["padded"] == (1024, 1024)
    # The stride on the first 1x1 of stages 3-5 makes that conv run on a quarter of the positions: each
    # saves 3/4 of H x W x planes x in-channels, 2^31 multiply-adds at every stage on a 1024 square.
    v1, _ = flops.backbone_macs(flops.Feature(1024, 1024, 3), 50, 64, stride_in_1x1=True)
    v15, _ = flops.backbone_macs(flops.Feature(1024, 1024, 3), 50, 64)
    assert v15 - v1 == 3 * 2 ** 31 * 3 // 4 and seed["stages"]["backbone"] == 2 * v1
    # rpn_conv_shared 256 -> 512 on P2..P6 (256^2 + ... + 16^2 positions), then 2 x 3 logits and 12 deltas.
    positions = 256 ** 2 + 128 ** 2 + 64 ** 2 + 32 ** 2 + 16 ** 2
    assert seed["stages"]["rpn_head"] == 2 * positions * (256 * 512 * 9 + 512 * 6 + 512 * 12)


def test_table_lists_every_stage_and_the_floor(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_YAML)
    table = flops.format_table(flops.count_flops(config, 64, 64, detections=5), gflops_per_second=1.0)
    for stage in flops.STAGES + ("total",):
        assert stage in table
    assert "floor at 1 GFLOP/s: 0.014 s per frame" in table


def test_invalid_config_is_refused(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("backbone: {depth: 42}\n")
    with pytest.raises(ValueError, match="backbone.depth"):
        flops.count_flops(config, 64, 64)

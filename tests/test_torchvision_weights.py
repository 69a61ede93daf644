"""The numpy-made torchvision state dicts: deterministic, well initialised, and (when torchvision is
installed) key for key, shape for shape what torchvision itself builds."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from models.tools.torchvision_weights import OVERRIDE_PREFIX, make_state_dict, reference_state_dict

# Runs in a child process: importing torchvision after tensorflow in one process crashes.
TORCHVISION_LAYOUTS = """
import json, sys
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
num_classes = int(sys.argv[1])
def layout(model):
    return [[k, list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()]
out = {str(d): layout(MaskRCNN(resnet_fpn_backbone(backbone_name=f"resnet{d}", weights=None, trainable_layers=3),
                               num_classes=num_classes)) for d in (18, 34, 50, 101)}
out["maskrcnn_resnet50_fpn"] = layout(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes))
out["v2-50"] = layout(maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=num_classes))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def torchvision_layouts():
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed (optional extra)")
    done = subprocess.run([sys.executable, "-c", TORCHVISION_LAYOUTS, "7"], capture_output=True, text=True,
                          check=True, timeout=600)
    return json.loads(done.stdout)


@pytest.mark.parametrize("arch, depth", [("v1", 18), ("v1", 34), ("v1", 50), ("v1", 101), ("v2", 50)])
def test_keys_shapes_and_dtypes_match_torchvision(torchvision_layouts, arch, depth):
    ours = [[k, list(v.shape), f"torch.{v.dtype}"] for k, v in make_state_dict(depth, num_classes=7, arch=arch).items()]
    assert ours == torchvision_layouts[str(depth) if arch == "v1" else f"{arch}-{depth}"]


def test_maskrcnn_resnet50_fpn_differs_only_by_num_batches_tracked(torchvision_layouts):
    untrained = torchvision_layouts["maskrcnn_resnet50_fpn"]
    extra = [entry for entry in untrained if entry[0].endswith("num_batches_tracked")]
    assert len(extra) == 53 and all(entry[1:] == [[], "torch.int64"] for entry in extra)
    assert [entry for entry in untrained if entry not in extra] == torchvision_layouts["50"]


def test_resnet50_layout_and_size():
    state = make_state_dict(50)
    assert len(state) == 307
    assert sum(v.size for v in state.values()) == 44_507_633
    assert all(v.dtype == np.float32 for v in state.values())
    assert state["roi_heads.box_predictor.cls_score.weight"].shape == (91, 1024)
    assert state["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape == (91, 256, 1, 1)
    assert state["backbone.fpn.inner_blocks.3.0.weight"].shape == (256, 2048, 1, 1)


def test_v2_layout_and_size():
    state = make_state_dict(50, arch="v2")
    assert len(state) == 432
    assert sum(v.size for v in state.values()) == 46_420_790
    tracked = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(tracked) == 53 + 8 + 4 + 4                           # ResNet-50, FPN, box head, mask head
    assert all(state[k].dtype == np.int64 and state[k].shape == () and state[k] == 0 for k in tracked)
    assert all(v.dtype == np.float32 for k, v in state.items() if k not in tracked)
    assert state["backbone.fpn.inner_blocks.3.0.weight"].shape == (256, 2048, 1, 1)
    assert "backbone.fpn.inner_blocks.3.0.bias" not in state       # the batch norm after it has the bias
    assert state["backbone.fpn.layer_blocks.0.1.running_var"].shape == (256,)
    assert state["rpn.head.conv.1.0.bias"].shape == (256,) and "rpn.head.conv.2.0.weight" not in state
    assert state["roi_heads.box_head.3.0.weight"].shape == (256, 256, 3, 3)
    assert state["roi_heads.box_head.5.weight"].shape == (1024, 256 * 7 * 7)
    assert state["roi_heads.mask_head.3.1.weight"].shape == (256,) and "roi_heads.mask_head.3.0.bias" not in state


def test_v2_body_draws_the_same_values_as_v1():
    """The body's kinds are the same in both and num_batches_tracked draws nothing from the generator."""
    v1, v2 = make_state_dict(50, seed=2), make_state_dict(50, seed=2, arch="v2")
    body = [k for k in v1 if k.startswith("backbone.body.")]
    assert all(np.array_equal(v1[k], v2[k]) for k in body)
    assert not np.array_equal(v1["rpn.head.cls_logits.weight"], v2["rpn.head.cls_logits.weight"])


def test_same_seed_same_values_other_seed_other_values():
    first, again, other = make_state_dict(18, seed=3), make_state_dict(18, seed=3), make_state_dict(18, seed=4)
    key = "backbone.body.layer2.0.conv1.weight"
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first[key], other[key])


def test_initialisation_statistics():
    state = make_state_dict(50, seed=1)
    kernel = state["backbone.body.layer3.0.conv2.weight"]            # fan_in 256 * 3 * 3
    assert kernel.std() == pytest.approx(np.sqrt(2 / (256 * 9)), rel=0.02)
    assert abs(kernel.mean()) < 1e-3
    assert state["roi_heads.box_head.fc6.weight"].std() == pytest.approx(0.01, rel=0.02)
    bn = "backbone.body.layer4.2.bn3"
    assert state[f"{bn}.weight"].mean() == pytest.approx(1.0, abs=0.02)
    assert state[f"{bn}.bias"].std() == pytest.approx(0.1, rel=0.1)
    assert np.all(state[f"{bn}.running_mean"] == 0) and np.all(state[f"{bn}.running_var"] == 1)


def test_v2_initialisation_statistics():
    state = make_state_dict(50, seed=1, arch="v2")
    for key, fan_in in [("roi_heads.box_head.2.0.weight", 256 * 9), ("backbone.fpn.inner_blocks.2.0.weight", 1024),
                        ("rpn.head.conv.1.0.weight", 256 * 9), ("roi_heads.mask_head.1.0.weight", 256 * 9)]:
        assert state[key].std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.02), key
    assert state["roi_heads.box_head.5.weight"].std() == pytest.approx(0.01, rel=0.02)
    assert state["rpn.head.conv.1.0.bias"].std() == pytest.approx(0.01, rel=0.2)
    for bn in ("backbone.fpn.layer_blocks.1.1", "roi_heads.box_head.0.1", "roi_heads.mask_head.3.1"):
        assert state[f"{bn}.weight"].mean() == pytest.approx(1.0, abs=0.03)
        assert state[f"{bn}.weight"].std() == pytest.approx(0.1, rel=0.2)
        assert state[f"{bn}.bias"].std() == pytest.approx(0.1, rel=0.2)
        assert np.all(state[f"{bn}.running_mean"] == 0) and np.all(state[f"{bn}.running_var"] == 1)


@pytest.mark.parametrize("depth, arch", [(42, "v1"), (101, "v2")])
def test_unknown_depth_is_refused(depth, arch):
    with pytest.raises(ValueError, match="depth"):
        make_state_dict(depth, arch=arch)


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="arch must be one of v1, v2, got v3"):
        make_state_dict(50, arch="v3")


def test_reference_state_dict_applies_overrides(tmp_path):
    key = "backbone.body.bn1.running_var"
    path = tmp_path / "ref.npz"
    np.savez(path, seed=5, depth=18, num_classes=4, **{f"override/{key}": np.full(64, 2.5, np.float32)})
    state, plain = reference_state_dict(path), make_state_dict(18, 4, seed=5)
    assert np.all(state[key] == 2.5)
    assert all(np.array_equal(state[k], plain[k]) for k in plain if k != key)


def test_reference_state_dict_reads_the_arch(tmp_path):
    key = "roi_heads.box_head.1.1.running_mean"
    path = tmp_path / "ref.npz"
    np.savez(path, arch="v2", seed=5, depth=50, num_classes=4, **{f"override/{key}": np.full(256, 0.5, np.float32)})
    state, plain = reference_state_dict(path), make_state_dict(50, 4, seed=5, arch="v2")
    assert list(state) == list(plain) and np.all(state[key] == 0.5)
    assert all(np.array_equal(state[k], plain[k]) for k in plain if k != key)


def test_reference_state_dict_refuses_misfit_override(tmp_path):
    path = tmp_path / "ref.npz"
    np.savez(path, seed=0, depth=18, num_classes=4, **{"override/backbone.body.bn1.running_var": np.ones(3)})
    with pytest.raises(ValueError, match="bn1.running_var"):
        reference_state_dict(path)


@pytest.mark.parametrize("name", ["tv_reference_r50.npz", "tv_reference_r18_320.npz", "tv_reference_v2_320.npz"])
def test_committed_reference_is_complete(name):
    """The references bench/torchvision_reference.py wrote: every batch norm conditioned (v2: also those
    of the FPN, box head and mask head), and per image >= 50 detections with distinct scores, 28x28 mask
    probabilities and full-frame RLE masks."""
    path = Path(__file__).parent / "data" / name
    state = reference_state_dict(path)                             # every override fits the layout
    assert ("roi_heads.box_head.5.weight" in state) == name.startswith("tv_reference_v2")
    with np.load(path) as ref:
        batch_norm_stats = {k for k in state if k.endswith((".running_mean", ".running_var"))}
        assert batch_norm_stats <= {n[len(OVERRIDE_PREFIX):] for n in ref.files if n.startswith(OVERRIDE_PREFIX)}
        assert len(ref["image_names"]) >= 3
        for image, (height, width) in zip(ref["image_names"], ref["original_sizes"]):
            scores = ref[f"{image}/scores"]
            count = len(scores)
            assert count >= 50 and len(np.unique(scores)) == count and np.all(scores > 0.05)
            assert ref[f"{image}/boxes"].shape == (count, 4) and ref[f"{image}/labels"].shape == (count,)
            assert ref[f"{image}/mask_probs"].shape == (count, 28, 28)
            rles = [{"size": [int(height), int(width)], "counts": str(c)} for c in ref[f"{image}/mask_counts"]]
            masks = mask_utils.decode(rles)
            assert masks.shape == (height, width, count) and 0 < masks.mean() < 1

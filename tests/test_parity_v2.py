"""Parity with torchvision's maskrcnn_resnet50_fpn_v2 on real 1280x720 frames.

tests/data/tv_reference_v2_320.npz was written by bench/torchvision_reference.py --arch v2: torchvision
ran seeded random weights (models/tools/torchvision_weights.py), every BatchNorm2d and the predictors
conditioned so that every image yields >= 50 detections with distinct scores. Here the same state dict
goes through the converter (which recognises v2 by its keys and folds its 69 batch norms) into
configs/coco_r50_fpn_v2.yaml, and the detections must agree one to one, with v1's thresholds.
"""
from pathlib import Path

import numpy as np
import pytest

import models
from models.errors import ConversionError
from models.mask_rcnn import MaskRCNN
from models.tools.convert import TORCHVISION_CONFIGS, convert_state_dict, torchvision_arch
from models.tools.parity import compare_reference, read_reference_frames
from models.tools.torchvision_weights import make_state_dict, reference_state_dict

DATA = Path(__file__).resolve().parent / "data"
REFERENCE = DATA / "tv_reference_v2_320.npz"


def test_v2_is_recognised_by_its_keys():
    assert torchvision_arch(make_state_dict(50, arch="v2")) == "v2"
    assert torchvision_arch(make_state_dict(50, arch="v1")) == "v1"
    assert TORCHVISION_CONFIGS["v2"].name == "coco_r50_fpn_v2.yaml"


@pytest.mark.slow
def test_same_detections_as_torchvision_v2():
    ref = np.load(REFERENCE)
    config = models.load_config("configs/coco_r50_fpn_v2.yaml")
    config.input.min_size, config.input.max_size = int(ref["min_size"]), int(ref["max_size"])
    config.box_head.score_threshold = float(ref["score_thresh"])
    config.box_head.detections_per_image = int(ref["detections_per_img"])
    model = MaskRCNN(config, convert_state_dict(reference_state_dict(REFERENCE), config, REFERENCE.name))
    frames = read_reference_frames(ref, Path("../shared/data"))
    matched = flips = 0
    for name, parity in compare_reference(model, ref, frames).items():
        ref_scores = ref[f"{name}/scores"]
        assert len(ref_scores) >= 50 and len(np.unique(ref_scores)) == len(ref_scores)
        assert parity.matched_fraction >= 0.98, f"{name}: {len(parity.pairs)} of {len(ref_scores)} matched"
        assert max(parity.score_differences) <= 1e-3, f"{name}: scores differ by {max(parity.score_differences)}"
        # Masks of 100 pixels or more need IoU >= 0.98, smaller ones may differ by 2 pixels; a mask that
        # only moved with its box (torchvision's paste truncates the box to whole pixels, and the boxes
        # differ by float rounding) must agree when pasted into torchvision's box: ImageParity.paste_flips.
        assert not parity.mask_failures(), f"{name}: {parity.mask_failures()}"
        matched += len(parity.pairs)
        flips += len(parity.paste_flips())
    assert flips <= 0.02 * matched, f"{flips} of {matched} masks agree only in torchvision's box"


def test_a_v2_state_dict_does_not_convert_into_the_v1_configuration():
    config = models.load_config("configs/coco_r50_fpn.yaml")
    state = make_state_dict(50, arch="v2")
    with pytest.raises(ConversionError) as e:
        convert_state_dict(state, config, "v2.pth")
    message = str(e.value)
    # v1 reads the FPN's batch norm as folded (v2 keys), then misses v1's fc6.
    assert message.startswith("v2.pth: missing key roi_heads.box_head.fc6.weight") and "\n" not in message

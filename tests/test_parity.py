"""Parity with torchvision's Mask R-CNN on real 1280x720 frames.

The references in tests/data were written by bench/torchvision_reference.py: torchvision ran
seeded random weights (models/tools/torchvision_weights.py), conditioned so that every image yields
>= 50 detections with distinct scores. Here the same state dict goes through models.tools.convert and
the TensorFlow model, and the detections must agree one to one.
"""
from pathlib import Path

import cv2
import numpy as np
import pytest

import models
from models.mask_rcnn import MaskRCNN
from models.tools.convert import convert_state_dict
from models.tools.parity import compare_image
from models.tools.torchvision_weights import reference_state_dict

DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.parametrize("reference", ["tv_reference_r18_320.npz",
                                       pytest.param("tv_reference_r50.npz", marks=pytest.mark.slow)])
def test_same_detections_as_torchvision(reference):
    ref = np.load(DATA / reference)
    config = models.load_config("configs/coco_r50_fpn.yaml")
    config.backbone.depth = int(ref["depth"])
    config.input.min_size, config.input.max_size = int(ref["min_size"]), int(ref["max_size"])
    config.box_head.score_threshold = float(ref["score_thresh"])
    config.box_head.detections_per_image = int(ref["detections_per_img"])
    model = MaskRCNN(config, convert_state_dict(reference_state_dict(DATA / reference), config, reference))
    names = [str(n) for n in ref["image_names"]]
    frames = [cv2.cvtColor(cv2.imread(f"../shared/data/{n}.jpg"), cv2.COLOR_BGR2RGB) for n in names]
    results = model.predict(frames, masks="rle")
    for name, ours in zip(names, results):
        ref_scores = ref[f"{name}/scores"]
        assert len(ref_scores) >= 50 and len(np.unique(ref_scores)) == len(ref_scores)
        parity = compare_image(ours.boxes, ours.scores, ours.class_ids, ours.rles, ref[f"{name}/boxes"], ref_scores,
                               ref[f"{name}/labels"], ref[f"{name}/mask_counts"])
        assert parity.matched_fraction >= 0.98, f"{name}: {len(parity.pairs)} of {len(ref_scores)} matched"
        assert max(parity.score_differences) <= 1e-3, f"{name}: scores differ by {max(parity.score_differences)}"
        # Larger masks need IoU >= 0.98; masks of a few pixels may differ by at most 2 pixels (a pixel on
        # the 0.5 threshold may flip with float rounding): ImageParity.mask_failures.
        assert not parity.mask_failures(), f"{name}: {parity.mask_failures()}"

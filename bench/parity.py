"""Parity report: the TensorFlow model against torchvision's recorded outputs, per image.

    python bench/parity.py            # both references in tests/data; writes bench/results/parity.json

The same comparison as tests/test_parity.py, reported as numbers: detections matched one to one
(same class, box IoU >= 0.99), the largest score difference, the largest box coordinate
difference, and the smallest mask IoU over matched pairs whose masks are not empty.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import models  # noqa: E402
from models.mask_rcnn import MaskRCNN  # noqa: E402
from models.tools.convert import convert_state_dict  # noqa: E402
from models.tools.parity import compare_image  # noqa: E402
from models.tools.torchvision_weights import reference_state_dict  # noqa: E402

REFERENCES = ["tv_reference_r50.npz", "tv_reference_r18_320.npz"]


def compare(reference: str) -> dict:
    path = ROOT / "tests" / "data" / reference
    ref = np.load(path)
    config = models.load_config(ROOT / "configs" / "coco_r50_fpn.yaml")
    config.backbone.depth = int(ref["depth"])
    config.input.min_size, config.input.max_size = int(ref["min_size"]), int(ref["max_size"])
    config.box_head.score_threshold = float(ref["score_thresh"])
    model = MaskRCNN(config, convert_state_dict(reference_state_dict(path), config, reference))
    names = [str(n) for n in ref["image_names"]]
    frames = [cv2.cvtColor(cv2.imread(str(ROOT.parent / "shared" / "data" / f"{n}.jpg")), cv2.COLOR_BGR2RGB)
              for n in names]
    report = {}
    for name, ours in zip(names, model.predict(frames, masks="rle")):
        parity = compare_image(ours.boxes, ours.scores, ours.class_ids, ours.rles, ref[f"{name}/boxes"],
                               ref[f"{name}/scores"], ref[f"{name}/labels"], ref[f"{name}/mask_counts"])
        ious = [m.iou for m in parity.masks if m.union]
        report[name] = {
            "torchvision_detections": parity.reference, "our_detections": parity.ours, "matched": len(parity.pairs),
            "max_score_difference": max(parity.score_differences),
            "max_box_difference_px": max(parity.box_differences_px),
            "min_mask_iou": min(ious), "mean_mask_iou": float(np.mean(ious)), "non_empty_masks": len(ious),
            "differing_mask_pixels": sum(m.differing for m in parity.masks)}
    return report


def main() -> None:
    results = {reference: compare(reference) for reference in REFERENCES}
    print(f"{'reference':26s} {'image':10s} {'matched':>9s} {'max |dscore|':>12s} {'max |dbox| px':>13s} "
          f"{'min mask IoU':>12s} {'mean mask IoU':>13s}")
    for reference, images in results.items():
        for name, r in images.items():
            print(f"{reference:26s} {name:10s} {r['matched']:>4d}/{r['torchvision_detections']:<4d} "
                  f"{r['max_score_difference']:12.2e} {r['max_box_difference_px']:13.4f} {r['min_mask_iou']:12.4f} "
                  f"{r['mean_mask_iou']:13.4f}")
    out = ROOT / "bench" / "results" / "parity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

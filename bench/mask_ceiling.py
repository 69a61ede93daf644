"""How much mask AP the mask representation itself allows: perfect boxes and perfect M x M masks.

    python bench/mask_ceiling.py --data DIR [--sizes 28 56]

For every ground-truth instance of a COCO data set (for example generated scenes, `python -m
models.data.scenes write DIR ...`), the ground-truth mask is sampled at the centres of M x M cells
over its own box, exactly as the training targets are made (models/roi_heads.py), then pasted back
into the frame with each of the model's paste modes (models/postprocess.py) and scored with
pycocotools as a detection of score 1. No model runs: the numbers are the AP a model would get
if its boxes and its M x M mask probabilities were perfect, i.e. the ceiling that the mask size
and the paste put on mask AP. Prints a table and writes bench/results/mask_ceiling.json.
"""
import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from models.postprocess import masks_to_rles, sample_in_box  # noqa: E402
from models.tools.evaluate import METRICS, coco_evaluate  # noqa: E402

RESULTS = REPO / "bench" / "results" / "mask_ceiling.json"
MODES = ("torchvision", "exact")


def perfect_results(gt: COCO, size: int, mode: str) -> list[dict]:
    """One score-1 detection per ground-truth instance, its mask round-tripped through size x size."""
    results = []
    for ann in gt.loadAnns(gt.getAnnIds(iscrowd=False)):
        mask = gt.annToMask(ann)
        x, y, w, h = ann["bbox"]
        box = np.array([[x, y, x + w, y + h]], np.float32)
        probs = sample_in_box(mask, box[0], size)[None]
        (rle,) = masks_to_rles(probs, box, mask.shape, padding=1, threshold=0.5, mode=mode)
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann["bbox"],
                        "score": 1.0, "segmentation": rle})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="COCO data set directory (annotations.json)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 56])
    args = parser.parse_args()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(args.data / "annotations.json"))
    rows = []
    for size in args.sizes:
        for mode in MODES:
            with contextlib.redirect_stdout(io.StringIO()):
                segm = coco_evaluate(gt, perfect_results(gt, size, mode))["segm"]
            rows.append({"mask_size": size, "paste": mode, **segm})
    report = {"data": str(args.data), "images": len(gt.getImgIds()), "instances": len(gt.getAnnIds()),
              "ceilings": rows}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'mask':>5} {'paste':<12}" + "".join(f"{k:>7}" for k in METRICS))
    for row in rows:
        print(f"{row['mask_size']:>5} {row['paste']:<12}"
              + "".join(f"{row[k]:>7.3f}" for k in METRICS))
    print(f"{report['instances']} instances in {report['images']} images; wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()

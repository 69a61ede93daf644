"""COCO evaluation of a model on a data set: bbox and segm AP, AP50, AP75, AP small/medium/large.

    python -m models.tools.evaluate [--config FILE [--weights W]] --data DIR_OR_SPEC
                              [--out FILE.json] [--limit N] [--batch N]

runs the model over the data set's images in file order (the first N with --limit), prints the
twelve numbers of pycocotools' COCOeval and writes them with the run's inputs to JSON
(default evaluation.json). Without --config it evaluates the embedded default model with its
trained weights; with --config and no --weights, that config's seeded random weights.

Model classes are matched to the data set's categories by name, so a model whose class list
is ordered differently, or is a superset (a COCO model on a data set of a few COCO classes),
is scored correctly; detections of classes the data set does not have are left out.

The pure part needs no model: `detections_to_coco` turns per-image detections into a COCO
results list, `coco_evaluate` scores such a list against a pycocotools COCO ground truth.
A metric is -1 where the ground truth has no instance (for example no large objects).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from ..config import load_config, model_and_weights
from ..data.coco import CocoDataset
from ..errors import DataError, command
from ..mask_rcnn import load_model

IOU_TYPES = ("bbox", "segm")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")     # COCOeval.stats[0:6]


def class_to_category(class_names: list[str], data: CocoDataset) -> dict[int, int]:
    """Model class id -> the data set's COCO category id, for the classes whose names match."""
    category_of_name = {name: data.category_of_class[k] for k, name in enumerate(data.class_names) if k > 0}
    return {k: category_of_name[name] for k, name in enumerate(class_names) if k > 0 and name in category_of_name}


def detections_to_coco(detections, image_ids: list[int], category_of_class: dict[int, int]) -> list[dict]:
    """Per-image detections (each with .boxes (N, 4) x1 y1 x2 y2, .scores (N,), .class_ids (N,),
    .rles N COCO RLE dicts) for `image_ids` -> COCO results: one dict per detection with image_id,
    category_id, bbox [x, y, w, h], score and segmentation. Unmatched classes are left out."""
    results = []
    for det, image_id in zip(detections, image_ids, strict=True):
        for box, score, class_id, rle in zip(det.boxes, det.scores, det.class_ids, det.rles, strict=True):
            category = category_of_class.get(int(class_id))
            if category is None:
                continue
            x1, y1, x2, y2 = (float(v) for v in box)
            counts = rle["counts"]
            results.append({"image_id": int(image_id), "category_id": category, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(score),
                            "segmentation": {"size": [int(s) for s in rle["size"]],
                                             "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}})
    return results


def coco_evaluate(gt: COCO, results: list[dict], image_ids: list[int] | None = None,
                  category_ids: list[int] | None = None) -> dict[str, dict[str, float]]:
    """COCO results scored against ground truth `gt` on `image_ids` (default: all its images) and
    `category_ids` (default: all its categories) -> {"bbox": {"AP": .., "AP50": .., ...,
    "per_class": {category name: AP}}, "segm": {...}}."""
    metrics = {}
    for iou_type in IOU_TYPES:
        # loadRes would replace a segmentation by the box's rectangle when both are present
        unused = "segmentation" if iou_type == "bbox" else "bbox"
        typed = [{k: v for k, v in r.items() if k != unused} for r in results]
        with contextlib.redirect_stdout(io.StringIO()):     # pycocotools prints as it goes
            found = gt.loadRes(typed) if typed else empty_like(gt)
            evaluation = COCOeval(gt, found, iou_type)
            if image_ids is not None:
                evaluation.params.imgIds = list(image_ids)
            if category_ids is not None:
                evaluation.params.catIds = list(category_ids)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        metrics[iou_type] = {name: float(value) for name, value in zip(METRICS, evaluation.stats)}
        metrics[iou_type]["per_class"] = per_class_ap(gt, evaluation)
    return metrics


def per_class_ap(gt: COCO, evaluation: COCOeval) -> dict[str, float]:
    """AP (IoU 0.50:0.95, all areas, the most detections) of each category with ground truth,
    by name, from an accumulated COCOeval; -1 where a category has no ground truth."""
    precision = evaluation.eval["precision"][:, :, :, 0, -1]    # (IoU thresholds, recall points, categories)
    out = {}
    for k, category in enumerate(evaluation.params.catIds):
        values = precision[:, :, k]
        values = values[values > -1]
        out[gt.cats[category]["name"]] = float(values.mean()) if values.size else -1.0
    return out


def empty_like(gt: COCO) -> COCO:
    """A COCO results object with no detections (loadRes cannot make one from an empty list)."""
    empty = COCO()
    empty.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
    empty.createIndex()
    return empty


def run_model(model, data: CocoDataset, image_ids: list[int], batch: int, progress: bool = True) -> list:
    """The model's detections (with RLE masks) for each image, in order."""
    detections = []
    with tqdm(total=len(image_ids), desc="evaluating", unit="image", disable=not progress) as bar:
        for start in range(0, len(image_ids), batch):
            chunk = image_ids[start:start + batch]
            detections += model.predict([data.load_image(i) for i in chunk], masks="rle")
            bar.update(len(chunk))
    return detections


def format_metrics(metrics: dict[str, dict]) -> str:
    lines = ["      " + "".join(f"{name:>8}" for name in METRICS)]
    lines += [f"{iou_type:<6}" + "".join(f"{metrics[iou_type][name]:8.3f}" for name in METRICS) for iou_type in IOU_TYPES]
    lines += [f"{iou_type} AP per class: " + ", ".join(f"{name} {ap:.3f}" for name, ap in metrics[iou_type]["per_class"].items())
              for iou_type in IOU_TYPES]
    return "\n".join(lines)


def evaluate(config_path: str, weights: str | None, data_spec: str, out: str, limit: int | None,
             batch: int) -> dict:
    """Run and score a model on a data set; writes and returns the report."""
    config = load_config(config_path)
    data = CocoDataset(data_spec)
    category_of_class = class_to_category(config.class_names, data)
    scored = None                        # every category of the data set
    if config.detected_class_ids is not None:   # box_head.classes: the model finds only these
        category_of_class = {k: c for k, c in category_of_class.items() if k in config.detected_class_ids}
        scored = sorted(category_of_class.values())
        print(f"box_head.classes: scoring only {', '.join(config.box_head.classes)}")
    if not category_of_class:
        raise DataError(f"{data_spec}: no category matches a class of {config_path} "
                        f"({', '.join(config.class_names[1:])})")
    unmatched = [name for k, name in enumerate(config.class_names) if k > 0 and k not in category_of_class]
    if unmatched:
        print(f"classes not in the data set, left out: {', '.join(unmatched)}")
    if weights is None:
        print("no --weights: evaluating the config's seeded random weights")
    model = load_model(config, weights)
    image_ids = data.image_ids[:limit]
    detections = run_model(model, data, image_ids, batch)
    results = detections_to_coco(detections, image_ids, category_of_class)
    metrics = coco_evaluate(data.coco, results, image_ids, scored)
    report = {"config": str(config_path), "weights": weights, "data": str(data_spec), "images": len(image_ids),
              "detections": len(results), **metrics, "skipped_annotations": dict(data.skipped)}
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskstream evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="model configuration YAML (default: the embedded default model)")
    parser.add_argument("--weights", help="weights file (.npz); default: the embedded model's own, or with --config "
                                          "the config's seeded random weights")
    parser.add_argument("--data", required=True, help="data directory (annotations.json + images/) or "
                                                      "coco:ANNOTATIONS_JSON:IMAGE_DIR")
    parser.add_argument("--out", default="evaluation.json", help="where to write the metrics (JSON)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--batch", type=int, default=2, help="frames per model call")
    args = parser.parse_args(argv)
    args.config, args.weights = model_and_weights(args.config, args.weights)
    if (args.limit is not None and args.limit < 1) or args.batch < 1:
        parser.error("--limit and --batch must be at least 1")
    report = evaluate(args.config, args.weights, args.data, args.out, args.limit, args.batch)
    print(f"{report['images']} images, {report['detections']} detections")
    print(format_metrics(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

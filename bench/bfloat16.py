"""What `precision: bfloat16` changes in the answers, against float32, on the same frames.

    python bench/bfloat16.py [--skip-agreement] [--skip-ap] [--scenes /tmp/eval777]

1. Agreement on the same frames: (a) the parity reference's weights (configs/coco_r50_fpn.yaml,
   ResNet-50 FPN at 800/1333, the seeded and conditioned, untrained weights of
   tests/data/tv_reference_r50.npz; its own score threshold 0.05, 100 detections at most) on real
   frames (the six 1280x720 highway stills, frames 0/100/200/300 of the pedestrian clip, frames
   0/18/36 of the highway clip); (b) the default model (trained; its own threshold 0.05) on the
   same real frames and (c) on the first 30 unseen scenes. Each float32 detection is matched one
   to one with a bfloat16 one (greedily in float32's score order, same class, box IoU >= 0.9:
   models/tools/parity.py); reported: the share of float32's detections matched (all of them, and
   those scoring >= 0.5), the distribution of |score difference| and of the pasted masks' IoU over
   the matched pairs.
2. Mask and box AP of the default model on generated scenes it never saw (`maskstream scenes
   write DIR --images 100 --seed 777777`, the set of bench/results/default_model_eval.json) in both
   precisions (models/tools/evaluate.py).
Prints the tables and writes bench/results/bfloat16.json (docs/performance.md quotes it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))   # after the repository: bench/pipeline.py is not the pipeline package
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import clips  # noqa: E402
import numpy as np  # noqa: E402
from model import default_model, reference_model, stills  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

DATA = clips.DATA
CLIP_FRAMES = {"pedestrians_720p.avi": [0, 100, 200, 300], "highway_720p_38f.mp4": [0, 18, 36]}
MATCH_IOU = 0.9
CONFIDENT = 0.5
QUANTILES = (1, 10, 50, 90, 99)
SCENES_COMPARED = 30
MATCH_IOU_TEXT = f"one to one, same class, box IoU >= {MATCH_IOU}"


def clip_frames() -> list[np.ndarray]:
    return [frame for name, indices in CLIP_FRAMES.items() for frame in clips.decode(DATA / name, indices=indices)]


def reference(precision: str):
    model = reference_model("tv_reference_r50.npz", 800, precision)
    model.config.box_head.score_threshold = 0.05   # the model's own (bench/model.py keeps every box)
    return model


def agreement(build, frames: list[np.ndarray]) -> dict:
    """float32 against bfloat16 detections of the model `build(precision)` gives, on the same
    frames (see the module docstring)."""
    from models.tools.parity import match_detections

    f32, bf16 = ([build(precision).predict([frame], masks="rle")[0] for frame in frames]
                 for precision in ("float32", "bfloat16"))
    totals = {"all": [0, 0], "confident": [0, 0]}   # [float32 detections, matched]
    score_diffs, mask_ious, bf16_count = [], [], 0
    for a, b in zip(f32, bf16):
        bf16_count += len(b)
        pairs = match_detections(a.boxes, a.class_ids, b.boxes, b.class_ids, min_iou=MATCH_IOU)
        matched = {i for i, _ in pairs}
        confident = a.scores >= CONFIDENT
        totals["all"][0] += len(a)
        totals["all"][1] += len(pairs)
        totals["confident"][0] += int(confident.sum())
        totals["confident"][1] += sum(1 for i in matched if confident[i])
        for i, j in pairs:
            score_diffs.append(abs(float(a.scores[i]) - float(b.scores[j])))
            ra, rb = ({"size": r["size"], "counts": r["counts"].encode()} for r in (a.rles[i], b.rles[j]))
            mask_ious.append(float(mask_utils.iou([ra], [rb], [0])[0, 0]))
    return {"frames": len(frames), "match": f"same class, box IoU >= {MATCH_IOU}",
            "float32_detections": totals["all"][0], "bfloat16_detections": bf16_count,
            "matched": totals["all"][1], "matched_share": totals["all"][1] / max(totals["all"][0], 1),
            "confident_float32_detections": totals["confident"][0], "confident_matched": totals["confident"][1],
            "confident_matched_share": totals["confident"][1] / max(totals["confident"][0], 1),
            "score_difference": quantiles(score_diffs), "mask_iou": quantiles(mask_ious)}


def scene_frames(scenes: str, count: int) -> list[np.ndarray]:
    from models.data.coco import CocoDataset
    data = CocoDataset(scenes)
    return [data.load_image(i) for i in data.image_ids[:count]]


def quantiles(values: list[float]) -> dict:
    if not values:
        return {f"p{q}": float("nan") for q in QUANTILES} | {"mean": float("nan")}
    return {f"p{q}": float(np.percentile(values, q)) for q in QUANTILES} | {"mean": float(np.mean(values))}


def default_model_ap(scenes: str) -> dict:
    """The default model's COCO metrics on `scenes` in float32 and bfloat16."""
    import models
    from models.tools.evaluate import evaluate

    out = {}
    for precision in ("float32", "bfloat16"):
        config = models.load_config(ROOT / "configs" / "default_model.yaml")
        config.precision = precision
        report = evaluate(config, str(ROOT / "configs" / "default_model.npz"), scenes, f"/tmp/bfloat16_eval_{precision}.json",
                          None, 2)
        out[precision] = {"segm": report["segm"], "bbox": report["bbox"], "detections": report["detections"]}
    out["mask_ap_loss"] = out["float32"]["segm"]["AP"] - out["bfloat16"]["segm"]["AP"]
    out["box_ap_loss"] = out["float32"]["bbox"]["AP"] - out["bfloat16"]["bbox"]["AP"]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", default="/tmp/eval777", help="the unseen scenes (see the module docstring)")
    parser.add_argument("--skip-agreement", action="store_true")
    parser.add_argument("--skip-ap", action="store_true")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "bfloat16.json")
    args = parser.parse_args(argv)
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(os.cpu_count())
    tf.config.threading.set_inter_op_parallelism_threads(os.cpu_count())

    report = json.loads(args.json.read_text()) if args.json.is_file() else {}
    if not (Path(args.scenes) / "annotations.json").is_file():
        parser.error(f"{args.scenes}: no scenes; make them: maskstream scenes write {args.scenes} --images 100 "
                     "--seed 777777")
    if not args.skip_agreement:
        real = stills() + clip_frames()
        report["agreement"] = {
            "reference weights, real frames": agreement(reference, real),
            "default model, real frames": agreement(default_model, real),
            f"default model, {SCENES_COMPARED} unseen scenes": agreement(default_model,
                                                                        scene_frames(args.scenes, SCENES_COMPARED))}
    if not args.skip_ap:
        report["default_model"] = default_model_ap(args.scenes)
    if "agreement" in report:
        print(f"bfloat16 against float32 ({MATCH_IOU_TEXT}); |score difference| and mask IoU over the matched pairs")
        print(f"{'':<34} {'frames':>6} {'matched':>14} {'score >= 0.5':>14} {'|dscore| p50':>12} {'p99':>7} "
              f"{'mask IoU p1':>11} {'p10':>7} {'p50':>7}")
        for name, a in report["agreement"].items():
            print(f"{name:<34} {a['frames']:>6} {a['matched']:>5}/{a['float32_detections']:<4} {a['matched_share']:>4.0%}"
                  f" {a['confident_matched']:>5}/{a['confident_float32_detections']:<4} "
                  f"{a['confident_matched_share']:>4.0%} {a['score_difference']['p50']:12.4f} "
                  f"{a['score_difference']['p99']:7.4f} {a['mask_iou']['p1']:11.3f} {a['mask_iou']['p10']:7.3f} "
                  f"{a['mask_iou']['p50']:7.3f}")
    if "default_model" in report:
        d = report["default_model"]
        print(f"{'default model':<16}{'mask AP':>9}{'AP50':>9}{'box AP':>9}")
        for precision in ("float32", "bfloat16"):
            print(f"{precision:<16}{d[precision]['segm']['AP']:9.3f}{d[precision]['segm']['AP50']:9.3f}"
                  f"{d[precision]['bbox']['AP']:9.3f}")
        print(f"mask AP loss {d['mask_ap_loss']:.4f}, box AP loss {d['box_ap_loss']:.4f}")
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

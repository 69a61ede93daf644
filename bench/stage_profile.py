"""Where a frame's time goes: the model's stages timed one by one, beside torchvision's.

    python bench/stage_profile.py [--config r50_fpn_800|default] [--batch 1] [--calls 5] [--precision float32]
                                  [--clip] [--score-threshold T]

Each stage runs as its own compiled function on the previous stage's outputs (computed once), so
its time is its own: preprocess (normalise, resize, pad), backbone, FPN, RPN head, proposal
selection (top-k, decoding, NMS per level), box head and NMS (RoIAlign 7x7, the FC head, per-class
decoding and NMS), mask head (RoIAlign 14x14 of the detections kept, the mask head) and paste and
RLE (outside the graph, per detection). `whole graph` is the one compiled call `predict` makes
(every stage but paste and RLE), `predict` the full call. Medians over `--calls` timed calls
after one warm-up, wall and this process's CPU seconds; on a shared machine the shares, and the
CPU seconds more than the wall ones, are what counts. torchvision's per-stage times at
the same batch size come from bench/results/torchvision_speed.json (bench/torchvision_speed.py; its
"rpn" is head and selection together, its "box" RoIAlign (both poolings), the box head and the
per-class NMS). The reference model runs on the 1280x720 stills and the default model on its
640x360 scenes, as in bench/model.py; `--clip` runs either on the 1280x720 pedestrian clip the
pipeline benchmark uses, `--score-threshold` sets the model's (the pipeline's is 0.5). Prints a table and writes bench/results/profile_<config>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))   # after the repository: bench/pipeline.py is not the pipeline package
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from model import default_model, reference_model, scenes, stills  # noqa: E402

STAGES = ["preprocess", "backbone", "fpn", "rpn_head", "proposals", "box_head_nms", "mask_head", "paste_rle"]
# torchvision's stages (bench/torchvision_speed.py) summed into ours where they are cut differently.
TORCHVISION = {"preprocess": ["preprocess"], "backbone": ["backbone"], "fpn": ["fpn"], "rpn_head": ["rpn"],
               "proposals": [], "box_head_nms": ["roi_align", "box_head", "detect"], "mask_head": ["mask_head"],
               "paste_rle": ["paste"]}


def timed(fn, calls: int) -> tuple[tuple[float, float], object]:
    """Median (wall, this process's CPU) seconds of `calls` calls of fn() after one warm-up, and the last result."""
    out = fn()
    wall, cpu = [], []
    for _ in range(calls):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if hasattr(out, "numpy"):
            out.numpy()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return (statistics.median(wall), statistics.median(cpu)), out


def profile(model, frames: list[np.ndarray], calls: int) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds per call of each stage (and of the whole graph and predict) on one batch of frames."""
    import tensorflow as tf

    from models import anchors as anchor_lib
    from models import preprocess
    from models.backbone import resnet
    from models.fpn import fpn
    from models.image_size import padded_size, resized_size
    from models.mask_rcnn import pooling_features, to_compute
    from models.roi_heads import detect
    from models.rpn import rpn_head, select_proposals

    cfg, params = model.config, model.stage_params   # what inference reads: with Winograd kernels where it runs them
    batch = tf.constant(np.stack(frames))
    height, width = frames[0].shape[:2]
    image_hw = resized_size(height, width, cfg.input.min_size, cfg.input.max_size)
    padded_hw = padded_size(*image_hw, cfg.input.size_divisible)
    seconds = {}

    def stage(name, fn, *args):
        seconds[name], out = timed(lambda: fn(*args), calls)
        return out

    x = stage("preprocess", tf.function(lambda b: preprocess.normalize_resize_pad(
        b, image_hw, padded_hw, cfg.input.mean, cfg.input.std)), batch)
    c = stage("backbone", tf.function(lambda t: resnet(params, to_compute(t, cfg), cfg.backbone)), x)
    p = stage("fpn", tf.function(lambda *cs: fpn(params, list(cs))), *c)

    def head(*features):
        logits, deltas = rpn_head(params, list(features))
        return [tf.cast(t, tf.float32) for t in logits], [tf.cast(t, tf.float32) for t in deltas]

    logits, deltas = stage("rpn_head", tf.function(head), *p)
    anchors = anchor_lib.pyramid_anchors(padded_hw, [tuple(f.shape[1:3]) for f in p], cfg.anchors.sizes,
                                         cfg.anchors.aspect_ratios)
    proposals, _, valid = stage("proposals", tf.function(lambda lg, dl: select_proposals(
        lg, dl, anchors, image_hw, cfg.rpn, cfg.box_xform_clip)), logits, deltas)
    pooling = tf.function(pooling_features)(list(p))

    def boxes_and_nms(pooling, proposals, valid):
        b, n = tf.shape(proposals)[0], proposals.shape[1]
        class_logits, box_deltas = model.classify_boxes(pooling, tf.reshape(proposals, [-1, 4]),
                                                        tf.repeat(tf.range(b), n), image_hw)
        class_logits = tf.reshape(class_logits, [b, n, cfg.num_classes])
        box_deltas = tf.reshape(box_deltas, [b, n, cfg.num_classes, 4])
        return detect(class_logits, box_deltas, proposals, valid, image_hw, cfg.box_head, cfg.box_xform_clip)

    boxes, scores, class_ids, kept = stage("box_head_nms", tf.function(boxes_and_nms), pooling, proposals, valid)
    stage("mask_head", tf.function(lambda *a: model._masks(*a, image_hw)), pooling, boxes, class_ids, kept)
    raw = {k: v.numpy() for k, v in model.graph_for(height, width)(batch).items()}

    def paste():
        return [model._frame_detections(raw, j, (height, width), image_hw, "rle") for j in range(len(frames))]

    stage("paste_rle", paste)
    stage("whole graph", model.graph_for(height, width), batch)
    stage("predict", lambda: model.predict(frames, masks="rle"))
    return seconds


def torchvision_stages(name: str, batch: int) -> dict[str, float] | None:
    """torchvision's seconds per frame by our stages, from bench/results/torchvision_speed.json."""
    path = ROOT / "bench" / "results" / "torchvision_speed.json"
    try:
        run = json.loads(path.read_text())["configs"][name]["batch_sizes"][str(batch)]
    except (OSError, KeyError):
        return None
    s = run["stage_seconds_per_frame"]
    out = {ours: sum(s[k] for k in theirs) for ours, theirs in TORCHVISION.items()}
    out["predict"] = run["seconds_per_frame"]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=["r50_fpn_800", "default"], default="r50_fpn_800")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--clip", action="store_true", help="frames of ../shared/data/pedestrians_720p.avi")
    parser.add_argument("--score-threshold", type=float)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    if args.config == "r50_fpn_800":
        model, frames = reference_model("tv_reference_r50.npz", 800, args.precision), stills()
    else:
        model, frames = default_model(), scenes(8)
        model.config.precision = args.precision
    if args.clip:
        from clips import PEDESTRIANS, decode
        frames = decode(PEDESTRIANS, 8)
    if args.score_threshold is not None:
        model.config.box_head.score_threshold = args.score_threshold
    batch = [frames[i % len(frames)] for i in range(args.batch)]
    load = os.getloadavg()[0]
    seconds = profile(model, batch, args.calls)
    per_frame = {k: v[0] / args.batch for k, v in seconds.items()}
    cpu_per_frame = {k: v[1] / args.batch for k, v in seconds.items()}
    tv = torchvision_stages(args.config, args.batch) if args.precision == "float32" else None
    staged, staged_cpu = sum(per_frame[s] for s in STAGES), sum(cpu_per_frame[s] for s in STAGES)
    print(f"{args.config}, batch {args.batch}, {args.precision}, {args.threads} threads, load {load:.1f}")
    print(f"{'stage':<14} {'s/frame':>8} {'share':>6} {'CPU s':>8} {'share':>6} {'torchvision':>12}")
    for name in STAGES + ["whole graph", "predict"]:
        share = f"{per_frame[name] / staged * 100:5.0f}%" if name in STAGES else ""
        cpu_share = f"{cpu_per_frame[name] / staged_cpu * 100:5.0f}%" if name in STAGES else ""
        theirs = f"{tv[name]:12.3f}" if tv and name in tv and (name == "predict" or TORCHVISION[name]) else ""
        print(f"{name:<14} {per_frame[name]:8.3f} {share:>6} {cpu_per_frame[name]:8.3f} {cpu_share:>6} {theirs:>12}")
    print(f"{'sum of stages':<14} {staged:8.3f} {'':>6} {staged_cpu:8.3f}")
    out = args.json or ROOT / "bench" / "results" / f"profile_{args.config}.json"
    report = {"config": args.config, "batch": args.batch, "precision": args.precision, "threads": args.threads,
              "calls": args.calls, "load_average_before": load, "load_average_after": os.getloadavg()[0],
              "seconds_per_frame": per_frame, "cpu_seconds_per_frame": cpu_per_frame,
              "torchvision_seconds_per_frame": tv}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Training speed: the default model's training step in float32 and in bfloat16, side by side.

    python bench/train_step.py [--steps 12] [--config configs/default_model.yaml]
    python bench/train_step.py --against REV [--rounds 3] [--steps 12]     # before/after in one run

Both trainers start from the same weights, the committed default model's (what every stage after
the first trains; `--random` starts from seeded random weights instead), and take the same prepared
batches (generated street scenes, seed 4242, prepared before timing: the data input is timed on its
own), interleaved step by step so that the machine's drift falls on both alike. Per precision: the
median seconds per step, images per second, and the step's FLOPs estimated as 3x the forward pass
(the backward pass costs about twice the forward) from bench/flops.py's analytic count at the
training canvas, the box head over the sampled RoIs and the mask head over the positive ones: the
sampler's whole positive quota from trained weights (their proposals fill it: 64 of 64 in every
batch of two checked by hand), about one per ground-truth instance from random ones (the ground
truth is added to the proposals); "floor" is the fraction of this machine's 395 GFLOP/s float32
floor (DESIGN.md). Last, what the default model's recipe
(scripts/train_default_model.sh) costs at the float32 step time.
Prints a table and writes bench/results/train_step.json; the README quotes it.

`--against REV` measures this revision beside another: REV is checked out into a temporary git
worktree, and that revision's own bench/train_step.py and this one's run in turn (`--rounds`
times, each a separate process with the same --steps, the order swapped every round so that
drift falls on both alike). Per precision it prints each revision's median seconds per step (the
median of its rounds' medians) and the ratio, and writes bench/results/train_step_against.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.chdir(ROOT)

from flops import count_flops  # noqa: E402

FLOOR_GFLOPS = 395.0
PRECISIONS = ("float32", "bfloat16")
RECIPE_STEPS = 3300 + 3000 + 3000 + 3000 + 2000 + 2000   # scripts/train_default_model.sh, stages 1-8


def step_flops(config, canvas: tuple[int, int], positives: float) -> float:
    """Estimated FLOPs of one training step: 3 x the forward pass of every image of the batch."""
    spec = config.to_dict()
    spec["rpn"]["post_nms_top_n_test"] = config.box_head.batch_size_per_image   # the box head's sampled RoIs
    forward = count_flops(spec, canvas[1], canvas[0], max(1, round(positives)))["total"]
    return 3.0 * forward * config.train.batch_size


def prepared_batches(config, data_dir: Path, count: int) -> tuple[list[dict], float]:
    """`count` training batches from the real input pipeline, and its median seconds per batch."""
    from models.data.coco import CocoDataset
    from models.training.batches import mini_mask_size, training_batches
    data = CocoDataset(data_dir, mask_size=mini_mask_size(config))
    config.class_names = list(data.class_names)
    batches, times = [], []
    iterator = iter(training_batches(data, config, seed=0))
    for _ in range(count):
        t = time.perf_counter()
        batches.append(next(iterator))
        times.append(time.perf_counter() - t)
    return batches, statistics.median(times[2:])


def run_script(root: Path, args: argparse.Namespace, json_path: Path) -> dict:
    """One measurement by the bench/train_step.py of the checkout at `root`, in its own process."""
    command = [sys.executable, str(root / "bench" / "train_step.py"), "--config", args.config,
               "--steps", str(args.steps), "--json", str(json_path)] + (["--random"] if args.random else [])
    subprocess.run(command, cwd=root, check=True)
    return json.loads(json_path.read_text())


def against(args: argparse.Namespace) -> None:
    """This revision's training step beside REV's, alternating rounds (see the module docstring)."""
    revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.against], check=True,
                              capture_output=True, text=True).stdout.strip()
    this = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                check=True, capture_output=True, text=True).stdout.strip())
    labels = {"this": this + ("+changes" if dirty else ""), "other": revision}
    runs = {"this": [], "other": []}
    with tempfile.TemporaryDirectory() as tmp:
        other_root = Path(tmp) / f"rev-{revision}"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(other_root), revision],
                       check=True)
        try:
            for round_ in range(args.rounds):
                order = ("this", "other") if round_ % 2 == 0 else ("other", "this")
                for side in order:
                    root = ROOT if side == "this" else other_root
                    print(f"== round {round_ + 1}/{args.rounds}: {labels[side]}", flush=True)
                    runs[side].append(run_script(root, args, Path(tmp) / f"{side}-{round_}.json"))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other_root)], check=False)
    table = {}
    for precision in PRECISIONS:
        medians = {side: statistics.median(r["precisions"][precision]["seconds_per_step"] for r in runs[side])
                   for side in runs}
        table[precision] = {labels["this"]: medians["this"], labels["other"]: medians["other"],
                            "ratio_this_over_other": medians["this"] / medians["other"]}
    print(f"\n{'precision':10s} {labels['other'] + ' s/step':>18s} {labels['this'] + ' s/step':>22s} {'ratio':>7s}")
    for precision, row in table.items():
        print(f"{precision:10s} {row[labels['other']]:18.3f} {row[labels['this']]:22.3f} "
              f"{row['ratio_this_over_other']:7.2f}")
    report = {"this": labels["this"], "other": labels["other"], "rounds": args.rounds, "steps": args.steps,
              "config": args.config, "seconds_per_step": table, "runs": runs}
    out = args.json or ROOT / "bench" / "results" / "train_step_against.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/default_model.yaml")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per precision (after 2 untimed)")
    parser.add_argument("--json", type=Path, help="where to write the results (default bench/results/train_step.json, "
                                                  "or train_step_against.json with --against)")
    parser.add_argument("--random", action="store_true", help="start from random weights, not the default model's")
    parser.add_argument("--against", metavar="REV", help="also measure git revision REV, alternating with this one")
    parser.add_argument("--rounds", type=int, default=3, help="with --against: measurements of each revision")
    args = parser.parse_args(argv)
    if args.against:
        against(args)
        return

    import numpy as np
    import tensorflow as tf

    from models.config import load_config
    from models.data.scenes import write_dataset
    from models.mask_rcnn import MaskRCNN, initial_params
    from models.training.batches import canvas_size
    from models.training.trainer import Trainer
    from models.weights import read_weights

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp) / "scenes", images=2 * (args.steps + 2), seed=4242, progress=False)
        base = load_config(args.config)
        batches, data_seconds = prepared_batches(base, Path(tmp) / "scenes", args.steps + 2)

    weights = None if args.random else ROOT / "configs" / "default_model.npz"
    params = read_weights(weights)[0] if weights else initial_params(base, seed=0)
    trainers = {}
    for precision in PRECISIONS:
        config = load_config(args.config, [f"precision={precision}"])
        config.class_names = base.class_names
        trainers[precision] = Trainer(MaskRCNN(config, params, trainable=True))
    times = {p: [] for p in PRECISIONS}
    instances = []
    for i, batch in enumerate(batches):
        for precision, trainer in trainers.items():
            t = time.perf_counter()
            parts = trainer.train_step(batch["image"], batch["boxes"], batch["class_ids"], batch["masks"])
            float(parts["total"])
            if i >= 2:
                times[precision].append(time.perf_counter() - t)
        instances.append(float(np.mean(np.sum(batch["class_ids"].numpy() > 0, axis=1))))

    canvas = canvas_size(base)
    quota = base.box_head.batch_size_per_image * base.box_head.positive_fraction
    positive_rois = min(quota, statistics.mean(instances)) if weights is None else quota
    flops = step_flops(base, canvas, positive_rois)
    results = {}
    for precision in PRECISIONS:
        s = statistics.median(times[precision])
        results[precision] = {"seconds_per_step": s, "images_per_second": base.train.batch_size / s,
                              "floor_fraction": flops / s / (FLOOR_GFLOPS * 1e9), "steps_timed": len(times[precision])}
    report = {"config": args.config, "weights": str(weights.relative_to(ROOT)) if weights else "random",
              "canvas": list(canvas), "batch_size": base.train.batch_size, "positive_rois_per_image": positive_rois,
              "estimated_flops_per_step": flops, "data_seconds_per_batch": data_seconds, "precisions": results,
              "bf16_speedup": results["float32"]["seconds_per_step"] / results["bfloat16"]["seconds_per_step"],
              "recipe_steps": RECIPE_STEPS,
              "recipe_hours_at_float32_step": RECIPE_STEPS * results["float32"]["seconds_per_step"] / 3600,
              "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
              "tensorflow": tf.__version__}
    print(f"\nfrom {report['weights']}: canvas {canvas[0]}x{canvas[1]}, batch {base.train.batch_size}, "
          f"{positive_rois:.0f} positive RoIs per image, ~{flops / 1e9:.0f} GFLOP/step (3x forward), "
          f"data input {data_seconds:.3f} s/batch")
    print(f"{'precision':10s} {'s/step':>8s} {'images/s':>9s} {'floor %':>8s}")
    for precision, r in results.items():
        print(f"{precision:10s} {r['seconds_per_step']:8.3f} {r['images_per_second']:9.2f} {r['floor_fraction'] * 100:8.0f}")
    print(f"bfloat16 / float32 speed: {report['bf16_speedup']:.2f}x; the recipe's {RECIPE_STEPS} steps at the float32 "
          f"step: {report['recipe_hours_at_float32_step']:.1f} h")
    out = args.json or ROOT / "bench" / "results" / "train_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

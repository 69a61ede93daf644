"""Time torchvision's Mask R-CNN on 1280x720 frames: the baseline the TensorFlow model is compared with.

Needs the optional torch extra; never imports tensorflow, so bench/model.py runs it as a subprocess:

    python bench/torchvision_speed.py                       # the two v1 configurations, batch sizes 1 2 4
    python bench/torchvision_speed.py --json OUT --batch-sizes 1 2 4 --frames 12 --configs r50_fpn_800
    python bench/torchvision_speed.py --configs v2_r50_fpn_800 --json bench/results/torchvision_speed_v2.json

Configurations (torchvision semantics, 100 detections kept: score threshold 0, detections_per_img 100):
  r50_fpn_800   maskrcnn_resnet50_fpn v1 at its defaults (short side 800, long side <= 1333), with the
                conditioned weights of tests/data/tv_reference_r50.npz (the parity reference);
  r18_fpn_512   the light comparison: ResNet-18 FPN at a short side of 512, weights of
                tests/data/tv_reference_r18_320.npz;
  v2_r50_fpn_800  maskrcnn_resnet50_fpn_v2 at its defaults (800/1333), with the conditioned weights of
                tests/data/tv_reference_v2_320.npz (the committed v2 reference, conditioned at 320: the
                weights decide what is detected, not how long it takes, as 100 are kept either way).
                Only when named in --configs (bench/model.py does not compare v2 yet).
Each batch size b runs one warm-up call (not timed), then max(1, frames // b) timed calls of b frames
(a list of frames per call, the stills ../shared/data/highway_*.jpg in turn); the medians are reported,
as wall seconds and as this process's CPU seconds (all threads), which shared, loaded machines distort
less; the 1-minute load average before and after is recorded too.
Per-stage times come from forward hooks on torchvision's modules: preprocess (transform), backbone
(body), fpn, rpn (head and proposal selection), roi_align (box and mask MultiScaleRoIAlign), box_head
(v1: fc6, fc7; v2: four convs and an FC; then the predictor), mask_head (convs, predictor), detect
(the rest of roi_heads: box decoding and the per-class NMS over 1000 RoIs x 90 classes, which
dominates at score threshold 0) and paste (the rest of the call: transform.postprocess, box
rescaling and mask pasting).
Writes bench/results/torchvision_speed.json (seconds per frame, frames per second, stages).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision
from torchvision_reference import DATA, ROOT, build_model, load_numpy_state, read_frames, reference_state_dict

CONFIGS = {
    "r50_fpn_800": {"arch": "v1", "depth": 50, "min_size": 800, "max_size": 1333,
                    "weights": "tests/data/tv_reference_r50.npz"},
    "r18_fpn_512": {"arch": "v1", "depth": 18, "min_size": 512, "max_size": 1333,
                    "weights": "tests/data/tv_reference_r18_320.npz"},
    "v2_r50_fpn_800": {"arch": "v2", "depth": 50, "min_size": 800, "max_size": 1333,
                       "weights": "tests/data/tv_reference_v2_320.npz"},
}
DEFAULT_CONFIGS = ["r50_fpn_800", "r18_fpn_512"]
STAGE_MODULES = {
    "preprocess": ["transform"],
    "backbone": ["backbone.body"],
    "fpn": ["backbone.fpn"],
    "rpn": ["rpn"],
    "roi_heads": ["roi_heads"],
    "roi_align": ["roi_heads.box_roi_pool", "roi_heads.mask_roi_pool"],
    "box_head": ["roi_heads.box_head", "roi_heads.box_predictor"],
    "mask_head": ["roi_heads.mask_head", "roi_heads.mask_predictor"],
}


class StageTimer:
    """Wall time spent in named torchvision modules during one call, from forward hooks."""

    def __init__(self, model: torch.nn.Module):
        modules = dict(model.named_modules())
        self.seconds = {}
        self._started = {}
        self._hooks = []
        for stage, names in STAGE_MODULES.items():
            for name in names:
                self._hooks.append(modules[name].register_forward_pre_hook(self._start(name)))
                self._hooks.append(modules[name].register_forward_hook(self._stop(stage, name)))

    def _start(self, name):
        def hook(module, inputs):
            self._started[name] = time.perf_counter()
        return hook

    def _stop(self, stage, name):
        def hook(module, inputs, output):
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - self._started[name]
        return hook

    def stages(self, total: float) -> dict[str, float]:
        """This call's seconds per stage; detect and paste are what the hooked modules leave over."""
        s = dict(self.seconds)
        roi_heads = s.pop("roi_heads")
        s["detect"] = roi_heads - s["roi_align"] - s["box_head"] - s["mask_head"]
        s["paste"] = total - s["preprocess"] - s["backbone"] - s["fpn"] - s["rpn"] - roi_heads
        self.seconds = {}
        return s

    def remove(self):
        for hook in self._hooks:
            hook.remove()


def make_model(name: str) -> torch.nn.Module:
    """A configuration of CONFIGS with its reference weights, keeping 100 detections per frame."""
    config = CONFIGS[name]
    model = build_model(config["arch"], config["depth"], 91, config["min_size"], config["max_size"],
                        score_thresh=0.0, detections_per_img=100)
    load_numpy_state(model, reference_state_dict(ROOT / config["weights"]))
    return model


@torch.inference_mode()
def time_batch_size(model: torch.nn.Module, frames: list[torch.Tensor], batch: int, calls: int) -> dict:
    """Median seconds per frame (and per stage) over `calls` timed calls of `batch` frames each."""
    def batch_of(call: int) -> list[torch.Tensor]:
        return [frames[(call * batch + i) % len(frames)] for i in range(batch)]

    model(batch_of(0))                                    # warm-up, not timed
    timer = StageTimer(model)
    totals, cpu_totals, stages, detections = [], [], [], []
    try:
        for call in range(1, calls + 1):
            start, cpu_start = time.perf_counter(), time.process_time()
            outputs = model(batch_of(call))
            totals.append(time.perf_counter() - start)
            cpu_totals.append(time.process_time() - cpu_start)
            stages.append(timer.stages(totals[-1]))
            detections.extend(len(out["scores"]) for out in outputs)
    finally:
        timer.remove()
    seconds_per_frame = statistics.median(totals) / batch
    return {
        "calls": calls,
        "call_seconds": [round(t, 4) for t in totals],
        "seconds_per_frame": round(seconds_per_frame, 4),
        "frames_per_second": round(1.0 / seconds_per_frame, 4),
        "cpu_seconds_per_frame": round(statistics.median(cpu_totals) / batch, 4),
        "stage_seconds_per_frame": {k: round(statistics.median(s[k] for s in stages) / batch, 4) for k in stages[0]},
        "min_detections_per_frame": min(detections),
    }


STAGES = ["preprocess", "backbone", "fpn", "rpn", "roi_align", "box_head", "detect", "mask_head", "paste"]


def print_header() -> None:
    print(f"{'config':<14} {'batch':>5} {'s/frame':>8} {'cpu s/fr':>8} {'fps':>6} "
          + " ".join(f"{s:>9}" for s in STAGES), flush=True)


def print_row(name: str, batch: int, r: dict) -> None:
    print(f"{name:<14} {batch:>5} {r['seconds_per_frame']:>8.3f} {r['cpu_seconds_per_frame']:>8.3f} "
          f"{r['frames_per_second']:>6.3f} " + " ".join(f"{r['stage_seconds_per_frame'][s]:>9.3f}" for s in STAGES),
          flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "torchvision_speed.json")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--frames", type=int, default=12, help="frames timed per batch size")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=DEFAULT_CONFIGS)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    paths = sorted(DATA.glob("highway_*.jpg"))
    frames = read_frames(paths)
    results = {}
    load_before = os.getloadavg()[0]
    print_header()
    for name in args.configs:
        model = make_model(name)
        results[name] = {**CONFIGS[name], "batch_sizes": {}}
        for batch in args.batch_sizes:
            timing = time_batch_size(model, frames, batch, max(1, args.frames // batch))
            results[name]["batch_sizes"][str(batch)] = timing
            print_row(name, batch, timing)
    report = {
        "benchmark": "torchvision Mask R-CNN, 100 detections per frame (score threshold 0)",
        "torch": torch.__version__, "torchvision": torchvision.__version__, "threads": args.threads,
        "machine": platform.machine(), "load_average_1min": [load_before, os.getloadavg()[0]],
        "frames": [p.name for p in paths],
        "frame_width_height": [frames[0].shape[2], frames[0].shape[1]], "configs": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

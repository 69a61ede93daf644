"""Model speed: the TensorFlow Mask R-CNN beside torchvision's, same weights, same frames.

    python bench/model.py [--frames 8] [--batch-sizes 1 2 4] [--bf16] [--skip-torchvision] [--only NAME ...]

Configurations (100 detections kept where the model allows: score threshold 0):
  r50_fpn_800   configs/coco_r50_fpn.yaml with the parity reference's weights (tests/data/tv_reference_r50.npz),
                1280x720 stills of ../shared/data, short side 800; torchvision runs the same (bench/torchvision_speed.py,
                in its own process: torchvision and tensorflow cannot share one);
  r18_fpn_512   the light comparison: ResNet-18 FPN at a short side of 512 (weights of tv_reference_r18_320.npz);
  default       the embedded default model (configs/default_model.yaml + .npz) on 640x360 generated street
                scenes, at its own input size (short side 360), its own score threshold.
`--only NAME ...` runs those configurations and replaces just their rows in the JSON written before.
Per configuration and batch size: one untimed warm-up call, then timed calls; the median seconds per frame
(wall and this process's CPU time), frames per second, the FLOPs per frame (bench/flops.py, analytic; the mask head over the
detections the run kept where the configuration does not keep 100) and the fraction of this machine's float32 floor that the run
reaches: `floor %` against the float32 matmul rate measured in this run (bench/floor.py, before and after the models, the
mean; `--floor-gflops` imposes one), `cpu floor %` the same per CPU-second (a frame's CPU seconds against the matmul's: what
a loaded machine distorts least). TF's threads: `--threads` (default: all cores, as `workers.cpus: auto` gives one worker).
Prints a table and writes bench/results/model.json; the README quotes it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.chdir(ROOT)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from floor import matmul_rate  # noqa: E402
from flops import count_flops  # noqa: E402
TORCHVISION_CONFIGS = ("r50_fpn_800", "r18_fpn_512")   # what bench/torchvision_speed.py runs beside ours
STILLS = [ROOT.parent / "shared" / "data" / f"highway_{i}.jpg" for i in range(1, 7)]


def reference_model(reference: str, min_size: int, precision: str = "float32"):
    import models
    from models.mask_rcnn import MaskRCNN
    from models.tools.convert import convert_state_dict
    from models.tools.torchvision_weights import reference_state_dict

    ref = np.load(ROOT / "tests" / "data" / reference)
    config = models.load_config("configs/coco_r50_fpn.yaml")
    config.backbone.depth = int(ref["depth"])
    config.input.min_size = min_size
    config.box_head.score_threshold = 0.0
    config.box_head.detections_per_image = 100
    config.precision = precision
    return MaskRCNN(config, convert_state_dict(reference_state_dict(ROOT / "tests" / "data" / reference), config))


def default_model(precision: str = "float32"):
    import models
    config = models.load_config("configs/default_model.yaml")
    config.precision = precision
    return models.load_model(config, weights="configs/default_model.npz")


def stills() -> list[np.ndarray]:
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in STILLS]


def scenes(count: int) -> list[np.ndarray]:
    from models.data.scenes import StreetScene
    scene = StreetScene(seed=4242, width=640, height=360)
    return [scene.frame(t)[0] for t in range(count)]


def time_model(model, frames: list[np.ndarray], batch: int, total_frames: int) -> dict:
    calls = max(1, total_frames // batch)
    batches = [[frames[(i * batch + j) % len(frames)] for j in range(batch)] for i in range(calls)]
    model.predict(batches[0], masks="rle")
    wall, cpu, detections = [], [], []
    for frames_in_call in batches:
        w0, c0 = time.perf_counter(), time.process_time()
        out = model.predict(frames_in_call, masks="rle")
        wall.append((time.perf_counter() - w0) / batch)
        cpu.append((time.process_time() - c0) / batch)
        detections.extend(len(d) for d in out)
    s = statistics.median(wall)
    return {"seconds_per_frame": s, "cpu_seconds_per_frame": statistics.median(cpu), "fps": 1.0 / s,
            "detections_per_frame": statistics.mean(detections), "calls": calls}


def torchvision_results(args, names: list[str]) -> dict:
    out = args.torchvision_json
    configs = sorted({name.removesuffix("_bf16") for name in names} & set(TORCHVISION_CONFIGS))
    if not configs:
        return {}
    cmd = [sys.executable, str(ROOT / "bench" / "torchvision_speed.py"), "--json", str(out), "--frames",
           str(args.frames), "--batch-sizes", *map(str, args.batch_sizes), "--threads", str(args.threads),
           "--configs", *configs]
    subprocess.run(cmd, check=True, cwd=ROOT / "bench")
    return json.loads(out.read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=8, help="frames timed per configuration and batch size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--skip-torchvision", action="store_true", help="reuse bench/results/torchvision_speed.json")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "model.json")
    parser.add_argument("--bf16", action="store_true", help="also run r50_fpn_800 and default with precision: bfloat16")
    parser.add_argument("--floor-gflops", type=float, help="the float32 floor in GFLOP/s (default: measured here)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="TensorFlow's intra- and inter-op threads")
    parser.add_argument("--only", nargs="+", help="run only these configurations (and torchvision only beside them) "
                        "and keep the other rows of --json")
    parser.add_argument("--torchvision-json", type=Path, default=ROOT / "bench" / "results" / "torchvision_speed.json")
    args = parser.parse_args(argv)

    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    load_before = os.getloadavg()[0]
    floor_before = matmul_rate()
    results = {}
    runs = [("r50_fpn_800", lambda: reference_model("tv_reference_r50.npz", 800), stills(), 100),
            ("r18_fpn_512", lambda: reference_model("tv_reference_r18_320.npz", 512), stills(), 100)]
    if args.bf16:
        runs.append(("r50_fpn_800_bf16", lambda: reference_model("tv_reference_r50.npz", 800, "bfloat16"), stills(),
                     100))
    if (ROOT / "configs" / "default_model.npz").is_file():
        runs.append(("default", default_model, scenes(24), None))
        if args.bf16:
            runs.append(("default_bf16", lambda: default_model("bfloat16"), scenes(24), None))
    if args.only:
        unknown = sorted(set(args.only) - {name for name, *_ in runs})
        if unknown:
            parser.error(f"--only: no configuration {', '.join(unknown)}")
        runs = [run for run in runs if run[0] in args.only]
        results = json.loads(args.json.read_text())["tensorflow"] if args.json.is_file() else {}
    for name, build, frames, dets in runs:
        model = build()
        results[name] = {"frame": list(frames[0].shape[:2]), "batches": {}}
        for batch in args.batch_sizes:
            r = time_model(model, frames, batch, args.frames)
            # The mask head's work is per detection: count the detections this run kept, where not fixed.
            kept = dets if dets is not None else round(r["detections_per_frame"])
            flops = results[name]["flops_per_frame"] = flops_for(model.config, frames[0], kept)
            r["gflops_per_cpu_second"] = flops / r["cpu_seconds_per_frame"] / 1e9
            results[name]["batches"][str(batch)] = r
            print(f"{name:12s} batch {batch}: {r['seconds_per_frame']:.3f} s/frame  {r['fps']:.2f} fps  "
                  f"{r['cpu_seconds_per_frame']:.3f} CPU s/frame", flush=True)
    floor_after = matmul_rate()
    floor = {"gflops_per_second": args.floor_gflops or (floor_before["gflops_per_second"] +
                                                        floor_after["gflops_per_second"]) / 2,
             "gflops_per_cpu_second": (floor_before["gflops_per_cpu_second"] + floor_after["gflops_per_cpu_second"]) / 2,
             "measured_before": floor_before, "measured_after": floor_after, "imposed": args.floor_gflops is not None}
    for name, *_ in runs:
        for b in results[name]["batches"].values():
            r = results[name]
            b["floor_fraction"] = r["flops_per_frame"] / b["seconds_per_frame"] / (floor["gflops_per_second"] * 1e9)
            b["cpu_floor_fraction"] = b["gflops_per_cpu_second"] / floor["gflops_per_cpu_second"]
    torchvision = (json.loads(args.torchvision_json.read_text())
                   if args.skip_torchvision else torchvision_results(args, [name for name, *_ in runs]))
    report = {"tensorflow": results, "torchvision": torchvision, "load_average_before": load_before,
              "load_average_after": os.getloadavg()[0], "threads": args.threads, "floor": floor}
    print_table(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))


def flops_for(config, frame: np.ndarray, detections: int) -> float:
    """Analytic FLOPs of one frame through `config` with `detections` masks (bench/flops.py)."""
    return float(count_flops(config.to_dict(), frame.shape[1], frame.shape[0], detections)["total"])


def tv_fps(torchvision: dict, name: str, batch: str):
    return tv_value(torchvision, name, batch, "frames_per_second")


def tv_cpu_seconds(torchvision: dict, name: str, batch: str):
    return tv_value(torchvision, name, batch, "cpu_seconds_per_frame")


def tv_value(torchvision: dict, name: str, batch: str, key: str):
    try:
        return torchvision["configs"][name]["batch_sizes"][batch][key]
    except (KeyError, TypeError):
        return None


def print_table(report: dict) -> None:
    floor = report["floor"]
    print(f"\nfloat32 floor: {floor['gflops_per_second']:.0f} GFLOP/s, {floor['gflops_per_cpu_second']:.0f} GFLOP per "
          f"CPU-second ({report['threads']} threads; load {report['load_average_before']:.1f} before, "
          f"{report['load_average_after']:.1f} after)")
    print(f"{'config':12s} {'batch':>5s} {'TF fps':>8s} {'torchvision fps':>16s} {'ratio':>6s} {'CPU ratio':>9s} "
          f"{'GFLOP/frame':>12s} {'floor %':>8s} {'cpu floor %':>11s}")
    for name, r in report["tensorflow"].items():
        for batch, b in r["batches"].items():
            tv = tv_fps(report["torchvision"], name.removesuffix("_bf16"), batch)
            tv_cpu = tv_cpu_seconds(report["torchvision"], name.removesuffix("_bf16"), batch)
            ratio = f"{b['fps'] / tv:.2f}" if tv else "-"
            cpu_ratio = f"{tv_cpu / b['cpu_seconds_per_frame']:.2f}" if tv_cpu else "-"
            print(f"{name:12s} {batch:>5s} {b['fps']:8.2f} {tv if tv else '-':>16} {ratio:>6s} {cpu_ratio:>9s} "
                  f"{r['flops_per_frame'] / 1e9:12.1f} {b['floor_fraction'] * 100:8.0f} {b.get('cpu_floor_fraction', float('nan')) * 100:11.0f}")


if __name__ == "__main__":
    main()

"""Winograd F(2x2, 3x3) and F(4x4, 3x3) (models/winograd.py) beside TensorFlow's direct convolution, layer by layer.

    python bench/winograd.py [--threads 2] [--calls 7]

The reference model's 3x3 stride-1 shapes at 800 px (backbone stages, FPN/RPN levels, the mask
head over 100 RoIs) and the default model's, conv + bias + ReLU on both sides (oneDNN fuses the
ReLU into its convolution), batch 1 unless the row says otherwise. The three sides alternate call
by call (the machine is shared); medians. Error: max |y - float64 reference| / max |y| of each
side. Prints a table and writes bench/results/winograd.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = [  # (batch, height, width, channels in, channels out, what)
    (1, 200, 304, 64, 64, "backbone layer1"), (1, 100, 152, 128, 128, "backbone layer2"),
    (1, 50, 76, 256, 256, "backbone layer3"), (1, 25, 38, 512, 512, "backbone layer4"),
    (1, 200, 304, 256, 256, "FPN / RPN at P2"), (1, 100, 152, 256, 256, "FPN / RPN at P3"),
    (1, 25, 38, 256, 256, "FPN / RPN at P5"), (100, 14, 14, 256, 256, "mask head, 100 RoIs"),
    (1, 90, 160, 128, 128, "default model P3"), (4, 100, 152, 256, 256, "P3, batch 4"),
    (1, 64, 64, 256, 256, "seed backbone stage 4"), (1, 256, 256, 256, 512, "seed RPN at P2")]


def exact(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The float64 convolution + bias + ReLU (SAME, stride 1), (B, H, W, C) -> (B, H, W, K)."""
    b, h, w, _ = x.shape
    padded = np.pad(x.astype(np.float64), [(0, 0), (1, 1), (1, 1), (0, 0)])
    y = sum(padded[:, i:i + h, j:j + w] @ kernel[i, j].astype(np.float64) for i in range(3) for j in range(3))
    return np.maximum(y + bias, 0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=7)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "winograd.json")
    args = parser.parse_args(argv)
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from models import winograd
    if not winograd.available():
        raise SystemExit(f"Winograd op unavailable: {winograd.unavailable()}")
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'shape':24s} {'what':22s} {'direct ms':>10s} {'F2 ms':>8s} {'F4 ms':>8s} {'F2 x':>6s} {'F4 x':>6s} "
          f"{'error direct':>13s} {'error F2':>9s} {'error F4':>9s}")
    for b, h, w, cin, cout, what in SHAPES:
        x = rng.normal(size=(b, h, w, cin)).astype(np.float32)
        kernel = (rng.normal(size=(3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
        bias = rng.normal(size=cout).astype(np.float32) * 0.1
        f2, f4 = (tf.constant(winograd.transform_kernel(kernel, tile)) for tile in (2, 4))
        sides = {"direct": tf.function(lambda t: tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(t, kernel, 1, "SAME"), bias))),
                 "f2": tf.function(lambda t: winograd.conv3x3(t, f2, bias, relu=True)),
                 "f4": tf.function(lambda t: winograd.conv3x3(t, f4, bias, relu=True))}
        xt = tf.constant(x)
        outputs = {name: fn(xt).numpy() for name, fn in sides.items()}   # traced, warmed
        times = {name: [] for name in sides}
        for _ in range(args.calls):
            for name, fn in sides.items():
                start = time.perf_counter()
                fn(xt).numpy()
                times[name].append((time.perf_counter() - start) * 1e3)
        want = exact(x, kernel, bias) if b * h * w <= 100 * 14 * 14 else None
        scale = np.abs(want).max() if want is not None else None
        row = {"shape": [b, h, w, cin, cout], "what": what,
               **{f"{name}_ms": statistics.median(t) for name, t in times.items()},
               **{f"{name}_error": (float(np.abs(out - want).max() / scale) if want is not None else None)
                  for name, out in outputs.items()}}
        row |= {f"{tile}_speedup": row["direct_ms"] / row[f"{tile}_ms"] for tile in ("f2", "f4")}
        rows.append(row)
        errors = [f"{row[f'{n}_error']:.1e}" if row[f"{n}_error"] is not None else "-" for n in sides]
        print(f"{'x'.join(map(str, (b, h, w, cin, cout))):24s} {what:22s} {row['direct_ms']:10.1f} {row['f2_ms']:8.1f} "
              f"{row['f4_ms']:8.1f} {row['f2_speedup']:6.2f} {row['f4_speedup']:6.2f} {errors[0]:>13s} {errors[1]:>9s} "
              f"{errors[2]:>9s}", flush=True)
    args.json.write_text(json.dumps({"threads": args.threads, "calls": args.calls, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

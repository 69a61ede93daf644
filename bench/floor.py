"""The FLOP floor of this machine, measured: dense matmul through TensorFlow with the threads given.

    python bench/floor.py [--threads 2]       # float32 and bfloat16, GFLOP/s wall and per CPU-second

A (4096 x 4096) @ (4096 x 4096) product, one untimed call, then the median of `calls` timed calls:
GFLOP/s of wall time (what a quiet machine gives: the floor of a frame's time) and per CPU-second
of this process (what a loaded, shared machine distorts less: a frame's CPU seconds against it
tell how much of the hardware the model uses even when other work takes turns on the cores).
bench/model.py measures it before and after its runs instead of quoting a fixed number: the
machines differ (an AVX-512 Xeon gave 395 GFLOP/s float32 on 2 cores, a 2-core AMD EPYC VM
about 200).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time


def matmul_rate(dtype: str = "float32", n: int = 4096, calls: int = 5) -> dict:
    """{"gflops_per_second": wall, "gflops_per_cpu_second": this process's CPU time}, medians."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal([n, n]), dtype)
    b = tf.cast(tf.random.normal([n, n]), dtype)
    product = tf.function(lambda x: tf.matmul(x, b))
    product(a).numpy()
    wall, cpu = [], []
    for _ in range(calls):
        w0, c0 = time.perf_counter(), time.process_time()
        product(a).numpy()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    flops = 2.0 * n ** 3
    return {"gflops_per_second": flops / statistics.median(wall) / 1e9,
            "gflops_per_cpu_second": flops / statistics.median(cpu) / 1e9}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    for dtype in ("float32", "bfloat16"):
        r = matmul_rate(dtype)
        print(f"{dtype:9s} {r['gflops_per_second']:7.0f} GFLOP/s  {r['gflops_per_cpu_second']:7.0f} GFLOP per CPU-second "
              f"({args.threads} threads, load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()

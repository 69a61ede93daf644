"""Device handling for inference workers, all in one place: which GPU, how much memory, which precision.

Ray gives each GPU worker `num_gpus=1` and names its GPU in `ray.get_gpu_ids()` (and normally
narrows CUDA_VISIBLE_DEVICES to it). TensorFlow is then pinned to that one device with memory
growth on, so workers sharing a node never grab each other's memory. A worker that Ray placed
on a GPU but whose TensorFlow finds none (a node that declares GPUs it does not have, a CPU-only
TensorFlow build) runs on the CPU and says so.

Threads: the runner plans each worker's TensorFlow thread count (see pipeline/runner.py,
`workers.cpus: auto`); a worker never runs more than the cores its process may use. Call
`configure_device` before the model is built: TensorFlow fixes devices and thread pools when it
first runs an op, so a worker's threads are set once, in its constructor.

Precision: `workers.precision: auto` runs bfloat16 on a CPU worker whose CPU computes bfloat16
natively (AVX-512 BF16 or AMX, read from the CPU flags in /proc/cpuinfo), the model config's own
precision elsewhere (GPUs, CPUs without native bfloat16 where it is emulated and slower, systems
without /proc/cpuinfo). docs/performance.md has what bfloat16 changes in the answers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import ray

# CPU flags (as /proc/cpuinfo names them) of a CPU that computes bfloat16 natively.
NATIVE_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass
class DeviceInfo:
    """Where a worker runs: "gpu" or "cpu", Ray's GPU ids for it, its node, and a note if any."""
    kind: str
    gpu_ids: list[str]
    node_id: str
    threads: int           # TensorFlow's intra- and inter-op threads
    note: str | None = None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_device(threads: float) -> DeviceInfo:
    """Pin TensorFlow to this actor's Ray-assigned GPU (memory growth on), or to the CPU, and
    give its intra- and inter-op pools `threads` threads (rounded, at least 1, at most
    `usable_cores()`), so that several workers on one node do not oversubscribe its cores.
    """
    import tensorflow as tf

    threads = min(max(1, round(threads)), usable_cores())
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    node_id = ray.get_runtime_context().get_node_id()
    visible = tf.config.list_physical_devices("GPU")
    if gpu_ids and visible:
        device = _assigned_device(visible, gpu_ids)
        tf.config.set_visible_devices([device], "GPU")
        tf.config.experimental.set_memory_growth(device, True)
        return DeviceInfo("gpu", gpu_ids, node_id, threads)
    tf.config.set_visible_devices([], "GPU")
    note = None
    if gpu_ids:
        note = f"Ray assigned GPU {','.join(gpu_ids)} but TensorFlow finds no GPU: running on the CPU"
    return DeviceInfo("cpu", gpu_ids, node_id, threads, note)


def _assigned_device(visible: list, gpu_ids: list[str]):
    """The TensorFlow device of this worker's first Ray GPU.

    When Ray narrowed CUDA_VISIBLE_DEVICES, TensorFlow sees exactly the assigned GPUs and the
    first is ours; otherwise TensorFlow sees all of the node's GPUs and Ray's id indexes them.
    """
    if len(visible) == len(gpu_ids):
        return visible[0]
    index = int(gpu_ids[0])
    if index >= len(visible):
        raise RuntimeError(f"Ray assigned GPU {index}, but TensorFlow sees only {len(visible)} GPUs")
    return visible[index]


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The flags of the first CPU listed in `cpuinfo` (Linux); empty where there is no such file."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def native_bfloat16(flags: set[str] | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), from its flags."""
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in NATIVE_BFLOAT16_FLAGS)


def model_precision(requested: str, configured: str, device: str = "cpu", flags: set[str] | None = None) -> str:
    """The precision the model runs at: `requested` ("float32", "bfloat16"); the model config's
    own (`configured`) for "model"; for "auto", bfloat16 on a CPU `device` with native bfloat16
    (`flags`: the CPU's flags, read from /proc/cpuinfo when None), else the model config's own."""
    if requested == "auto":
        return "bfloat16" if device == "cpu" and native_bfloat16(flags) else configured
    return configured if requested == "model" else requested

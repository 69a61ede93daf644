"""Device handling for inference workers, all in one place: which GPU, how much memory, which precision.

Ray gives each GPU worker `num_gpus=1` and names its GPU in `ray.get_gpu_ids()` (and normally
narrows CUDA_VISIBLE_DEVICES to it). TensorFlow is then pinned to that one device with memory
growth on, so workers sharing a node never grab each other's memory. A worker that Ray placed
on a GPU but whose TensorFlow finds none (a node that declares GPUs it does not have, a CPU-only
TensorFlow build) runs on the CPU and says so.

Call `configure_device` before the model is built: TensorFlow fixes devices and thread pools
when it first runs an op.
"""
from __future__ import annotations

from dataclasses import dataclass

import ray


@dataclass
class DeviceInfo:
    """Where a worker runs: "gpu" or "cpu", Ray's GPU ids for it, its node, and a note if any."""
    kind: str
    gpu_ids: list[str]
    node_id: str
    threads: int
    note: str | None = None


def configure_device(cpus: float) -> DeviceInfo:
    """Pin TensorFlow to this actor's Ray-assigned GPU (memory growth on), or to the CPU.

    `cpus` is the CPU share Ray reserved for the worker; TensorFlow's op thread pool gets that
    many threads, so that several workers on one node do not oversubscribe its cores.
    """
    import tensorflow as tf

    threads = max(1, round(cpus))
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


def model_precision(requested: str, configured: str) -> str:
    """The precision the model runs at: `requested` ("float32", "bfloat16"), or the model
    config's own (`configured`) when `requested` is "model"."""
    return configured if requested == "model" else requested

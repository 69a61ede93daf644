"""The inference worker: a Ray actor that loads the model once and runs it on batches of frames.

    worker = InferenceWorkerActor.options(num_gpus=1, num_cpus=2).remote(model_config, weights, threads=2)
    ray.get(worker.ready.remote())                  # where it runs: {"name", "device", "threads", ...}
    ray.get(worker.warm_up.remote([(720, 1280)], [1, 4]))  # compile for these frame and batch sizes
    result = ray.get(worker.infer.remote([FrameRef(ref, i), ...]))  # see workers/frames.py
    result.instances[i]                             # frame i's InstanceRecords (workers/results.py)
    result.timing_ms                                # {"fetch": ms, "inference": ms} for the batch

Frames come in as object-store handles and are read zero-copy on the worker's node; only small
results go back: the model's detections (class, label, score, box, COCO RLE mask) as plain
records, never pixels nor mask probabilities.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from .device import configure_device, model_precision
from .frames import FrameRef, fetch_frames
from .results import InstanceRecord, instance_records

# model_factory(model_config, weights) -> an object with predict(frames, masks="rle") -> list of
# Detections; the default is models.load_model. Benchmarks plug other models in here.
ModelFactory = Callable[[Any, "str | None"], Any]


@dataclass
class BatchResult:
    """What a worker gives back for a batch of frames."""
    instances: list[tuple[InstanceRecord, ...]]  # per frame, in order
    timing_ms: dict[str, float]  # {"fetch": reading the pixels, "inference": the model}, for the batch
    worker: str                 # the worker's name
    pid: int                    # its process: another pid than ready() gave means it was restarted


class InferenceWorker:
    """Holds one model on one device; see the module docstring. `InferenceWorkerActor` is the actor.

    `model_config`: a models.ModelConfig or the path of its YAML; `weights`: a weights file or
    None (seeded random weights); `threads`: TensorFlow's intra- and inter-op threads (the
    runner's plan: the CPU share Ray reserved, or with `workers.cpus: auto` the node's cores split
    between its workers); `precision`: "auto", "model", "float32" or "bfloat16"
    (workers/device.py); `model_factory`: see ModelFactory.
    """

    def __init__(self, model_config, weights: str | None = None, threads: float = 1,
                 precision: str = "model", model_factory: ModelFactory | None = None):
        self.device = configure_device(threads)
        self.name = ray.get_runtime_context().get_actor_name() or f"pid{os.getpid()}"
        self.model = None
        self.error = None
        self.precision = None
        import models

        try:
            config = models.load_config(model_config)
            config.precision = self.precision = model_precision(precision, config.precision, self.device.kind)
            self.model = (model_factory or models.load_model)(config, weights)
        except (models.ConfigError, models.WeightsError, OSError) as error:
            # A user's mistake (a bad model config, weights for another architecture): reported
            # by ready() in one line rather than as an actor crash Ray would restart in a loop.
            self.error = str(error)

    def ready(self) -> dict:
        """Where this worker runs and whether its model loaded: {"name", "pid", "device",
        "gpu_ids", "node_id", "threads", "precision", "convolution", "note", "error"}; threads:
        TensorFlow's intra- and inter-op threads; precision: what the model computes in ("float32"
        or "bfloat16"); convolution: how its 3x3 convolutions run ("winograd 4x4", "winograd 2x2" or "direct",
        models/winograd.py), None for a model that does not say; error is one line, or None."""
        return {"name": self.name, "pid": os.getpid(), "device": self.device.kind,
                "gpu_ids": self.device.gpu_ids, "node_id": self.device.node_id,
                "threads": self.device.threads, "precision": self.precision,
                "convolution": getattr(self.model, "convolution", None), "note": self.device.note,
                "error": self.error}

    def warm_up(self, frame_sizes: list[tuple[int, int]], batch_sizes: list[int]) -> None:
        """Run the model once per frame size (height, width) and batch size on black frames, so
        that graph tracing and compilation happen before the first real frames wait for them."""
        for height, width in frame_sizes:
            for batch in batch_sizes:
                self.model.predict(np.zeros((batch, height, width, 3), np.uint8), masks="rle")

    def infer(self, frames: list[FrameRef]) -> BatchResult:
        """Run the model on a batch of frames, as the ingest hands them out."""
        began = time.perf_counter()
        pixels = fetch_frames(frames)
        fetched = time.perf_counter()
        detections = self.model.predict(pixels, masks="rle")
        # each instance's mean colour (the tracker's appearance cue), counted as inference
        records = [instance_records(d, frame) for d, frame in zip(detections, pixels)]
        done = time.perf_counter()
        return BatchResult(records,
                           {"fetch": (fetched - began) * 1e3, "inference": (done - fetched) * 1e3},
                           self.name, os.getpid())


InferenceWorkerActor = ray.remote(InferenceWorker)

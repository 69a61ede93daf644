"""Frame handles: where a frame's pixels are in Ray's object store, and reading them back.

The ingest puts decoded frames into the object store in blocks (one (n, H, W, 3) RGB uint8 array
per put) and hands each frame on as a `FrameRef`: frame `index` of block `block`. The handle is
all that crosses the scheduler; the worker (and the publisher's overlay video) read the pixels
with `fetch_frames`, zero-copy on their node. It lives here, below the pipeline, because both
the workers and the pipeline use it and workers never import the pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ray


@dataclass(frozen=True)
class FrameRef:
    """Frame `index` of the object-store array `block`, RGB uint8 (n, H, W, 3)."""
    block: ray.ObjectRef
    index: int


def put_frames(block: np.ndarray) -> list[FrameRef]:
    """Put RGB uint8 frames (n, H, W, 3) into the object store as one object; a handle per frame."""
    ref = ray.put(block)
    return [FrameRef(ref, index) for index in range(len(block))]


def fetch_frames(frames: list[FrameRef]) -> list[np.ndarray]:
    """The RGB (H, W, 3) arrays of `frames`: each block is fetched once, zero-copy on its node
    (read-only views into the object store)."""
    blocks = list(dict.fromkeys(frame.block for frame in frames))
    arrays = dict(zip(blocks, ray.get(blocks)))
    return [arrays[frame.block][frame.index] for frame in frames]

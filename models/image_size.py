"""Frame sizes through preprocessing, in pure Python (no TensorFlow: bench/flops.py and the
training input use them too).

The resize rule is torchvision's: scale = min(min_size / short side, max_size / long side), each
side floor(side * scale) computed in double precision; the network then runs on the resized
image zero-padded at the bottom and right to a multiple of `size_divisible`.
"""
from __future__ import annotations

import math


def resized_size(height: int, width: int, min_size: float, max_size: float) -> tuple[int, int]:
    """The (height, width) a frame is resized to, exactly as torchvision computes it."""
    scale = min(float(min_size) / min(height, width), float(max_size) / max(height, width))
    return int(math.floor(height * scale)), int(math.floor(width * scale))


def padded_size(height: int, width: int, divisible: int) -> tuple[int, int]:
    """(height, width) rounded up to multiples of `divisible`."""
    return int(math.ceil(height / divisible) * divisible), int(math.ceil(width / divisible) * divisible)

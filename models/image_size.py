"""Frame sizes through preprocessing, in pure Python (no TensorFlow: bench/flops.py and the
training input use them too).

The resize rule is torchvision's: scale = min(min_size / short side, max_size / long side), each
side floor(side * scale) computed in double precision; the network then runs on the resized
image zero-padded at the bottom and right to a multiple of `size_divisible`. Or, with
`input.resize: square`, the seed's: `square_resized_size`, centred in a max_size square.
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


def square_resized_size(height: int, width: int, min_dim: int, max_dim: int) -> tuple[int, int]:
    """The (height, width) the seed's `resize_image` (IMAGE_RESIZE_MODE square) gives a frame before it is
    padded to a max_dim square: scale = max(1, min_dim / short side) (1 when min_dim is 0), lowered to
    max_dim / long side when the long side would round above max_dim; sides rounded (Python's round)."""
    scale = max(1, min_dim / min(height, width)) if min_dim else 1
    if round(max(height, width) * scale) > max_dim:
        scale = max_dim / max(height, width)
    return round(height * scale), round(width * scale)


def square_window(resized_hw: tuple[int, int], side: int) -> tuple[int, int, int, int]:
    """Where a resized frame sits in the side x side square, centred: (y1, x1, y2, x2), y2 and x2 exclusive."""
    top, left = (side - resized_hw[0]) // 2, (side - resized_hw[1]) // 2
    return top, left, top + resized_hw[0], left + resized_hw[1]


def input_sizes(height: int, width: int, cfg) -> tuple[tuple[int, int], tuple[int, int]]:
    """The resized (height, width) of a frame and the padded size the network runs on, by the rule of
    `cfg` (an InputConfig): torchvision's, or the seed's square of side cfg.max_size."""
    if cfg.resize == "square":
        return square_resized_size(height, width, cfg.min_size, cfg.max_size), (cfg.max_size, cfg.max_size)
    resized = resized_size(height, width, cfg.min_size, cfg.max_size)
    return resized, padded_size(*resized, cfg.size_divisible)

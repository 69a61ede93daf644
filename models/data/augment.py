"""The one augmentation path, for training: a random resize (torchvision's rule with a random
short side) and a random left-right flip of an example, boxes and mini masks following.

An example is a dict of numpy arrays as `CocoDataset.example` gives it: image uint8 (H, W, 3),
image_size int32 (2,), boxes float32 (N, 4) x1 y1 x2 y2 in pixels, mini masks uint8 (N, M, M)
relative to their boxes (so a resize leaves them unchanged and a flip mirrors them), and any
other keys, passed through.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..image_size import resized_size


@dataclass(frozen=True)
class Augmentation:
    """What `augment` does: resize so that the short side is drawn uniformly from `short_side`
    (pixels; None keeps the size) while the long side stays at most `max_size`, then flip
    left-right with probability 1/2 when `flip`."""
    flip: bool = True
    short_side: tuple[float, float] | None = None
    max_size: float = math.inf


def augment(example: dict, augmentation: Augmentation, rng: np.random.Generator) -> dict:
    """One example, resized then maybe flipped, with draws from `rng` (the short side first, then the flip)."""
    if augmentation.short_side is not None:
        height, width = example["image"].shape[:2]
        short = rng.uniform(*augmentation.short_side)
        example = resize_example(example, resized_size(height, width, short, augmentation.max_size))
    if augmentation.flip and rng.random() < 0.5:
        example = flip_example(example)
    return example


def resize_example(example: dict, size: tuple[int, int]) -> dict:
    """Resize an example's image to size = (height, width) (bilinear); boxes scale by the exact ratio
    of the new to the old side. Mini masks are relative to their box: unchanged."""
    height, width = example["image"].shape[:2]
    new_h, new_w = size
    if (new_h, new_w) == (height, width):
        return example
    image = cv2.resize(example["image"], (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    ratio = np.array([new_w / width, new_h / height] * 2, np.float32)
    return {**example, "image": image, "boxes": (example["boxes"] * ratio).astype(np.float32),
            "image_size": np.array([new_h, new_w], np.int32)}


def flip_example(example: dict) -> dict:
    """Mirror an example left-right: image columns, boxes x1' = W - x2, x2' = W - x1, mini masks."""
    width = example["image"].shape[1]
    boxes = example["boxes"].copy()
    boxes[:, [0, 2]] = width - example["boxes"][:, [2, 0]]
    return {**example, "image": np.ascontiguousarray(example["image"][:, ::-1]), "boxes": boxes,
            "masks": np.ascontiguousarray(example["masks"][:, :, ::-1])}

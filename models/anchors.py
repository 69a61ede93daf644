"""Anchors over all pyramid levels, in the padded image's pixel coordinates (x1, y1, x2, y2).

Feature sizes are static inside a compiled graph, so anchors are computed once per input shape
in numpy and enter the graph as constants. The order matches torchvision's AnchorGenerator:
level by level; within a level row-major over locations; within a location one anchor per
aspect ratio.

Layout "seed" (`seed_level_anchors`) is the seed's generate_anchors and norm_boxes: the same order,
other shapes and centres, and the seed's normalised frame (see the function).
"""
from __future__ import annotations

import functools

import numpy as np


def base_anchors(size: float, aspect_ratios: tuple[float, ...]) -> np.ndarray:
    """(A, 4) anchors centred on the origin; ratio = height / width, area = size^2, rounded."""
    ratios = np.asarray(aspect_ratios, np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1) / h_ratios
    ws = w_ratios * np.float32(size)
    hs = h_ratios * np.float32(size)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)).astype(np.float32)


@functools.lru_cache(maxsize=32)
def level_anchors(image_hw: tuple[int, int], feature_hw: tuple[int, int], size: float,
                  aspect_ratios: tuple[float, ...]) -> np.ndarray:
    """(H_l * W_l * A, 4) anchors of one level.

    The stride is image // feature per axis (integer division, as torchvision computes it, so an
    odd P5 gives P6 a stride that is not exactly 64).
    """
    stride_y = image_hw[0] // feature_hw[0]
    stride_x = image_hw[1] // feature_hw[1]
    shift_x = np.arange(feature_hw[1], dtype=np.float32) * np.float32(stride_x)
    shift_y = np.arange(feature_hw[0], dtype=np.float32) * np.float32(stride_y)
    sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
    anchors = shifts[:, None, :] + base_anchors(size, aspect_ratios)[None, :, :]
    anchors = anchors.reshape(-1, 4)
    anchors.setflags(write=False)
    return anchors


@functools.lru_cache(maxsize=32)
def seed_level_anchors(image_hw: tuple[int, int], feature_hw: tuple[int, int], size: float,
                       aspect_ratios: tuple[float, ...]) -> np.ndarray:
    """(H_l * W_l * A, 4) anchors of one level as the seed makes them, x1 y1 x2 y2 in its normalised frame.

    The seed's generate_anchors: ratio r = width / height (RPN_ANCHOR_RATIOS), height size / sqrt(r),
    width size * sqrt(r), centred at cell x stride (stride = image // feature, BACKBONE_STRIDES on a square
    divisible by 64), nothing rounded, in float64; then its norm_boxes: (y1, x1, y2 - 1, x2 - 1) / (S - 1)
    per axis, cast to float32.
    """
    stride_y = image_hw[0] // feature_hw[0]
    stride_x = image_hw[1] // feature_hw[1]
    ratios = np.array(aspect_ratios, np.float64)
    heights = size / np.sqrt(ratios)
    widths = size * np.sqrt(ratios)
    cy, cx = np.meshgrid(np.arange(feature_hw[0]) * stride_y, np.arange(feature_hw[1]) * stride_x, indexing="ij")
    cy, cx = cy.reshape(-1, 1), cx.reshape(-1, 1)
    y1, x1 = cy - 0.5 * heights, cx - 0.5 * widths
    y2, x2 = cy + 0.5 * heights, cx + 0.5 * widths
    h1, w1 = image_hw[0] - 1, image_hw[1] - 1
    anchors = np.stack([x1 / w1, y1 / h1, (x2 - 1) / w1, (y2 - 1) / h1], axis=-1).reshape(-1, 4).astype(np.float32)
    anchors.setflags(write=False)
    return anchors


def pyramid_anchors(image_hw: tuple[int, int], feature_hws: list[tuple[int, int]], sizes: list[float],
                    aspect_ratios: list[float], layout: str = "torchvision") -> list[np.ndarray]:
    """One (N_l, 4) array per level (layout "torchvision": `level_anchors`, "seed": `seed_level_anchors`)."""
    make = seed_level_anchors if layout == "seed" else level_anchors
    return [make(tuple(image_hw), tuple(hw), float(s), tuple(float(r) for r in aspect_ratios))
            for hw, s in zip(feature_hws, sizes)]

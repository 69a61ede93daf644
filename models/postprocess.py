"""Postprocessing back to each frame's own pixels: box rescaling, mask pasting, and COCO RLE
straight from the pasted box region.

Two ways to paste an (M, M) mask into its box (`mask_head.paste`):
- "torchvision": torchvision's `paste_masks_in_image` (the mask zero-padded by one cell, its box
  grown to match and truncated to whole pixels, resized over the box inclusive of x2, y2). Bit
  for bit what torchvision gives, but the truncation moves a mask by up to a pixel, which costs
  small and thin instances most of their IoU.
- "exact": every frame pixel inside the box samples the mask bilinearly at its own centre, with
  the box's float coordinates (cell j of the mask covers [x1 + j w / M, x1 + (j + 1) w / M), as
  the training targets are made; outside the mask counts as 0). detectron2 pastes this way.
- "seed": the seed's unmold_mask: the box is already whole pixels (`unmold_boxes`), the mask is
  resized to it with scikit-image as the seed does and thresholded at >= threshold.

Everything here is numpy/OpenCV on small per-detection arrays; a full-frame mask is only made
when the caller asks for one.
"""
from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils


def rescale_boxes(boxes: np.ndarray, resized_hw: tuple[int, int], original_hw: tuple[int, int]) -> np.ndarray:
    """boxes (N, 4) in resized pixels -> (N, 4) float32 in original pixels (float32 ratios, as torchvision)."""
    ratio_h = np.float32(original_hw[0]) / np.float32(resized_hw[0])
    ratio_w = np.float32(original_hw[1]) / np.float32(resized_hw[1])
    return (boxes.astype(np.float32) * np.array([ratio_w, ratio_h, ratio_w, ratio_h], np.float32)).astype(np.float32)


def normalized_windows(windows: np.ndarray, side: int) -> np.ndarray:
    """Windows (B, 4) y1 x1 y2 x2 in pixels of the square (y2, x2 exclusive) -> (B, 4) float32 x1 y1 x2 y2 in
    the seed's normalised frame: its norm_boxes, (y1, x1, y2 - 1, x2 - 1) / (side - 1)."""
    yx = (np.asarray(windows, np.float64) - np.array([0, 0, 1, 1])) / (side - 1)
    return yx[:, [1, 0, 3, 2]].astype(np.float32)


def unmolded_pixels(boxes: np.ndarray, window: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
    """The seed's unmold_detections for boxes, before rounding: boxes (N, 4) float32 x1 y1 x2 y2 in its
    normalised frame of the square, window (4,) the frame's place in the square in that frame (x1 y1 x2 y2,
    float32, `normalized_windows`) -> (N, 4) float64 x1 y1 x2 y2 in original pixels (x2, y2 exclusive).

    Out of the window: (box - window corner) / window size in float32; then the seed's denorm_boxes,
    box * (H - 1, W - 1) + (0, 0, 1, 1) in float64.
    """
    yx = boxes[:, [1, 0, 3, 2]].astype(np.float32)
    wy1, wx1, wy2, wx2 = np.asarray(window, np.float32)[[1, 0, 3, 2]]
    shift = np.array([wy1, wx1, wy1, wx1], np.float32)
    scale = np.array([wy2 - wy1, wx2 - wx1, wy2 - wy1, wx2 - wx1], np.float32)
    h, w = original_hw
    pixels = np.divide(yx - shift, scale) * np.array([h - 1, w - 1, h - 1, w - 1]) + np.array([0, 0, 1, 1])
    return pixels[:, [1, 0, 3, 2]]


def unmold_boxes(boxes: np.ndarray, window: np.ndarray, original_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """`unmolded_pixels` rounded as the seed does (np.around, to int32) -> boxes (N', 4) float32 x1 y1 x2 y2 in
    whole original pixels and the (N,) bool of the kept ones: zero-area boxes are dropped."""
    pixels = np.around(unmolded_pixels(boxes, window, original_hw)).astype(np.int32)
    keep = (pixels[:, 2] - pixels[:, 0]) * (pixels[:, 3] - pixels[:, 1]) > 0
    return pixels[keep].astype(np.float32), keep


def paste_region_seed(mask: np.ndarray, box: np.ndarray, image_hw: tuple[int, int],
                      threshold: float) -> tuple[np.ndarray, int, int]:
    """The seed's unmold_mask: mask (M, M) probabilities, box (4,) whole pixels x1 y1 x2 y2 (x2, y2
    exclusive) -> the region (y2 - y1, x2 - x1) bool (cropped to the frame) and its corner (y0, x0): the
    mask resized to the box (preprocess.resize_like_the_seed) and >= threshold."""
    from .preprocess import resize_like_the_seed

    x1, y1, x2, y2 = (int(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        return np.zeros((0, 0), bool), 0, 0
    region = resize_like_the_seed(mask, (y2 - y1, x2 - x1), preserve_range=False) >= threshold
    height, width = image_hw
    y0, x0 = max(y1, 0), max(x1, 0)
    return region[y0 - y1:min(y2, height) - y1, x0 - x1:min(x2, width) - x1], y0, x0


def paste_region(mask: np.ndarray, box: np.ndarray, image_hw: tuple[int, int], padding: int,
                 threshold: float, mode: str = "torchvision") -> tuple[np.ndarray, int, int]:
    """One mask (M, M) of probabilities and its box (4,) in frame pixels -> the pasted binary
    region (h, w) bool and its top-left corner (y0, x0) inside the frame.

    mode "torchvision": the mask is zero-padded by `padding`, its box grown to match, truncated
    to integers, resized bilinearly to the box (inclusive of x2, y2) and cropped to the frame.
    mode "exact": see `paste_region_exact`; mode "seed": see `paste_region_seed` (`padding` is not used).
    """
    if mode == "exact":
        return paste_region_exact(mask, box, image_hw, threshold)
    if mode == "seed":
        return paste_region_seed(mask, box, image_hw, threshold)
    m = mask.shape[-1]
    scale = np.float32((m + 2 * padding) / m)
    padded = np.pad(mask.astype(np.float32), padding)
    box = box.astype(np.float32)
    half_w = (box[2] - box[0]) * np.float32(0.5) * scale
    half_h = (box[3] - box[1]) * np.float32(0.5) * scale
    cx = (box[2] + box[0]) * np.float32(0.5)
    cy = (box[3] + box[1]) * np.float32(0.5)
    x1, y1, x2, y2 = (int(v) for v in (cx - half_w, cy - half_h, cx + half_w, cy + half_h))  # truncation
    w = max(x2 - x1 + 1, 1)
    h = max(y2 - y1 + 1, 1)
    resized = cv2.resize(padded, (w, h), interpolation=cv2.INTER_LINEAR)
    height, width = image_hw
    x0, xe = max(x1, 0), min(x2 + 1, width)
    y0, ye = max(y1, 0), min(y2 + 1, height)
    if xe <= x0 or ye <= y0:
        return np.zeros((0, 0), bool), 0, 0
    region = resized[y0 - y1:ye - y1, x0 - x1:xe - x1] > threshold
    return region, y0, x0


def paste_region_exact(mask: np.ndarray, box: np.ndarray, image_hw: tuple[int, int],
                       threshold: float) -> tuple[np.ndarray, int, int]:
    """One mask (M, M) of probabilities and its box (4,) x1 y1 x2 y2 in frame pixels -> the
    binary region (h, w) bool over the frame pixels the box touches, and its corner (y0, x0).

    Pixel (r, c) samples the mask bilinearly at u = (c + 0.5 - x1) / (x2 - x1) * M - 0.5 (and v
    likewise for rows); samples beyond the mask's outer cell centres blend towards 0.
    """
    m = mask.shape[-1]
    height, width = image_hw
    x1, y1, x2, y2 = (float(v) for v in box)
    x0, xe = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), width)
    y0, ye = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), height)
    if xe <= x0 or ye <= y0:
        return np.zeros((0, 0), bool), 0, 0
    u = ((np.arange(x0, xe) + 0.5 - x1) / max(x2 - x1, 1e-6) * m - 0.5).astype(np.float32)
    v = ((np.arange(y0, ye) + 0.5 - y1) / max(y2 - y1, 1e-6) * m - 0.5).astype(np.float32)
    map_u, map_v = np.meshgrid(u, v)
    sampled = cv2.remap(mask.astype(np.float32), map_u, map_v, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return sampled > threshold, y0, x0


def sample_in_box(mask: np.ndarray, box, size: int) -> np.ndarray:
    """The inverse of the exact paste: a frame mask (H, W) sampled bilinearly at the centres of
    size x size cells over box (4,) x1 y1 x2 y2 -> (size, size) float32, as the training targets
    sample their ground truth. Pasting it back "exact" returns the mask up to what size x size
    cells can hold (bench/mask_ceiling.py measures that on a data set)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    u = (x1 + (np.arange(size) + 0.5) * (x2 - x1) / size - 0.5).astype(np.float32)
    v = (y1 + (np.arange(size) + 0.5) * (y2 - y1) / size - 0.5).astype(np.float32)
    map_u, map_v = np.meshgrid(u, v)
    return cv2.remap(mask.astype(np.float32), map_u, map_v, cv2.INTER_LINEAR)


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_hw: tuple[int, int], padding: int = 1,
                threshold: float = 0.5, mode: str = "torchvision") -> np.ndarray:
    """masks (N, M, M), boxes (N, 4) in frame pixels -> (N, H, W) bool."""
    out = np.zeros((len(masks), image_hw[0], image_hw[1]), bool)
    for i, (mask, box) in enumerate(zip(masks, boxes)):
        region, y0, x0 = paste_region(mask, box, image_hw, padding, threshold, mode)
        out[i, y0:y0 + region.shape[0], x0:x0 + region.shape[1]] = region
    return out


def region_to_rle(region: np.ndarray, y0: int, x0: int, image_hw: tuple[int, int]) -> dict:
    """A binary region (h, w) placed at (y0, x0) in an (H, W) frame -> COCO compressed RLE
    {"size": [H, W], "counts": str}, without building the full-frame mask.

    COCO RLE runs over the frame in column-major order, alternating zeros and ones, starting
    with zeros. The run boundaries are the region's per-column 0/1 transitions; a run that
    ends at the bottom of one column and restarts at the top of the next is one run.
    """
    height, width = image_hw
    h, w = region.shape
    columns = np.zeros((w, h + 2), np.int8)
    columns[:, 1:-1] = region.T
    col, row = np.nonzero(np.diff(columns, axis=1))
    boundaries = (x0 + col).astype(np.int64) * height + (y0 + row)
    if len(boundaries) > 1:
        joined = np.flatnonzero(boundaries[1:] == boundaries[:-1])
        boundaries = np.delete(boundaries, np.concatenate([joined, joined + 1]))
    ends = [height * width] if not len(boundaries) or boundaries[-1] != height * width else []
    counts = np.diff(np.concatenate([[0], boundaries, ends])).astype(np.uint32)
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def masks_to_rles(masks: np.ndarray, boxes: np.ndarray, image_hw: tuple[int, int], padding: int = 1,
                  threshold: float = 0.5, mode: str = "torchvision") -> list[dict]:
    """masks (N, M, M), boxes (N, 4) in frame pixels -> N COCO compressed RLE dicts."""
    rles = []
    for mask, box in zip(masks, boxes):
        region, y0, x0 = paste_region(mask, box, image_hw, padding, threshold, mode)
        rles.append(region_to_rle(region, y0, x0, image_hw))
    return rles

"""Postprocessing back to each frame's own pixels: box rescaling, mask pasting (torchvision's
`paste_masks_in_image`, thresholded), and COCO RLE straight from the pasted box region.

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


def paste_region(mask: np.ndarray, box: np.ndarray, image_hw: tuple[int, int], padding: int,
                 threshold: float) -> tuple[np.ndarray, int, int]:
    """One mask (M, M) of probabilities and its box (4,) in frame pixels -> the pasted binary
    region (h, w) bool and its top-left corner (y0, x0) inside the frame.

    The mask is zero-padded by `padding`, its box grown to match, truncated to integers,
    resized bilinearly to the box (inclusive of x2, y2) and cropped to the frame.
    """
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


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_hw: tuple[int, int], padding: int = 1,
                threshold: float = 0.5) -> np.ndarray:
    """masks (N, M, M), boxes (N, 4) in frame pixels -> (N, H, W) bool."""
    out = np.zeros((len(masks), image_hw[0], image_hw[1]), bool)
    for i, (mask, box) in enumerate(zip(masks, boxes)):
        region, y0, x0 = paste_region(mask, box, image_hw, padding, threshold)
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
                  threshold: float = 0.5) -> list[dict]:
    """masks (N, M, M), boxes (N, 4) in frame pixels -> N COCO compressed RLE dicts."""
    rles = []
    for mask, box in zip(masks, boxes):
        region, y0, x0 = paste_region(mask, box, image_hw, padding, threshold)
        rles.append(region_to_rle(region, y0, x0, image_hw))
    return rles

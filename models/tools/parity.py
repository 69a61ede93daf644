"""Parity of this model's detections with a reference implementation's, image by image.

A reference (torchvision's, the seed's Keras graph) is recorded as per-image boxes (x1, y1, x2,
y2 in the frame's pixels), class ids, scores and COCO RLE masks. `compare_image` matches our
detections to them one to one — greedily in our score order, same class and box IoU >= 0.99 —
and measures how far each matched pair is apart. Used by tests/test_parity.py (thresholds) and
bench/parity.py (the numbers), so the two can never compare differently.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils

MATCH_IOU = 0.99            # box IoU for two detections to be the same one
LARGE_MASK_PIXELS = 100     # masks of at least this union are compared by IoU, smaller by pixels


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boxes (4,) x1 y1 x2 y2."""
    x1, y1 = np.maximum(a[:2], b[:2])
    x2, y2 = np.minimum(a[2:], b[2:])
    inter = max(x2 - x1, 0) * max(y2 - y1, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def match_detections(boxes: np.ndarray, class_ids: np.ndarray, ref_boxes: np.ndarray, ref_class_ids: np.ndarray,
                     min_iou: float = MATCH_IOU) -> list[tuple[int, int]]:
    """Greedy one-to-one matching in our (score) order: boxes (N, 4), class_ids (N,) against the
    reference's (M, 4), (M,) -> pairs (i, j) of the same class with box IoU >= min_iou."""
    pairs, used = [], set()
    for i in range(len(boxes)):
        candidates = [(box_iou(boxes[i], ref_boxes[j]), j) for j in range(len(ref_boxes))
                      if j not in used and ref_class_ids[j] == class_ids[i]]
        if candidates:
            best, j = max(candidates)
            if best >= min_iou:
                pairs.append((i, j))
                used.add(j)
    return pairs


@dataclass
class MaskPair:
    """One matched pair's masks: their union in pixels, IoU, and pixels that differ."""
    union: int
    iou: float
    differing: int


@dataclass
class ImageParity:
    """How one image's detections compare with the reference's."""
    ours: int
    reference: int
    pairs: list[tuple[int, int]]
    score_differences: list[float] = field(default_factory=list)
    box_differences_px: list[float] = field(default_factory=list)   # largest coordinate difference per pair
    masks: list[MaskPair] = field(default_factory=list)

    @property
    def matched_fraction(self) -> float:
        """Matched pairs over the larger of the two detection counts."""
        return len(self.pairs) / max(self.ours, self.reference, 1)

    def mask_failures(self, min_iou: float = 0.98, max_small_pixels: int = 2) -> list[str]:
        """The pairs whose masks disagree: IoU < min_iou for masks of LARGE_MASK_PIXELS or more,
        more than max_small_pixels differing pixels for smaller ones (a pixel sitting on the 0.5
        threshold may flip with float rounding, a large IoU change for a tiny mask)."""
        failures = []
        for (i, _), m in zip(self.pairs, self.masks):
            if m.union >= LARGE_MASK_PIXELS and m.iou < min_iou:
                failures.append(f"detection {i}: mask IoU {m.iou:.4f}")
            elif m.union < LARGE_MASK_PIXELS and m.differing > max_small_pixels:
                failures.append(f"detection {i}: {m.differing} mask pixels differ")
        return failures


def _rle(size, counts) -> dict:
    return {"size": [int(v) for v in size], "counts": counts.encode() if isinstance(counts, str) else bytes(counts)}


def compare_image(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, rles: list[dict],
                  ref_boxes: np.ndarray, ref_scores: np.ndarray, ref_class_ids: np.ndarray,
                  ref_counts) -> ImageParity:
    """Our detections of one image (boxes (N, 4), scores (N,), class ids (N,), N COCO RLE dicts)
    against the reference's (boxes (M, 4), scores (M,), class ids (M,), M RLE count strings of
    masks of the same frame size)."""
    pairs = match_detections(boxes, class_ids, ref_boxes, ref_class_ids)
    parity = ImageParity(len(scores), len(ref_scores), pairs)
    for i, j in pairs:
        parity.score_differences.append(float(abs(scores[i] - ref_scores[j])))
        parity.box_differences_px.append(float(np.abs(boxes[i] - ref_boxes[j]).max()))
        size = rles[i]["size"]
        a, b = mask_utils.decode([_rle(size, rles[i]["counts"]), _rle(size, str(ref_counts[j]))]
                                 ).transpose(2, 0, 1).astype(bool)
        union = int((a | b).sum())
        parity.masks.append(MaskPair(union, float((a & b).sum() / union) if union else 1.0, int((a ^ b).sum())))
    return parity

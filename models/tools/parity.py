"""Parity of this model's detections with a reference implementation's, image by image.

A reference (torchvision's, the seed's Keras graph) is recorded as per-image boxes (x1, y1, x2,
y2 in the frame's pixels), class ids, scores and COCO RLE masks. `compare_image` matches our
detections to them one to one — greedily in our score order, same class and box IoU >= 0.99 —
and measures how far each matched pair is apart. Used by tests/test_parity.py (thresholds) and
bench/parity.py (the numbers), so the two can never compare differently.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

MATCH_IOU = 0.99            # box IoU for two detections to be the same one
LARGE_MASK_PIXELS = 100     # masks of at least this union are compared by IoU, smaller by pixels
MIN_MASK_IOU = 0.98         # ... and must reach this IoU
MAX_SMALL_PIXELS = 2        # ... or differ in at most this many pixels
ROUNDING_MARGIN_PX = 0.05   # a whole-pixel coordinate may round the other way this close to a half pixel


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boxes (4,) x1 y1 x2 y2."""
    x1, y1 = np.maximum(a[:2], b[:2])
    x2, y2 = np.minimum(a[2:], b[2:])
    inter = max(x2 - x1, 0) * max(y2 - y1, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def rounding_flip(box: np.ndarray, ref_box: np.ndarray, ref_unrounded: np.ndarray) -> bool:
    """Whether two whole-pixel boxes (4,) differ only by coordinates that the reference rounded from within
    ROUNDING_MARGIN_PX of a half pixel (its unrounded box (4,)), by one pixel: float rounding in the
    thousandths of a pixel decides on which side such a coordinate lands."""
    difference = np.abs(np.asarray(box, np.float64) - ref_box)
    flipped = difference > 0
    half = np.abs(ref_unrounded[flipped] - np.floor(ref_unrounded[flipped]) - 0.5)
    return bool(difference.max() <= 1 and np.all(half <= ROUNDING_MARGIN_PX))


def match_detections(boxes: np.ndarray, class_ids: np.ndarray, ref_boxes: np.ndarray, ref_class_ids: np.ndarray,
                     min_iou: float = MATCH_IOU, ref_unrounded: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Greedy one-to-one matching in our (score) order: boxes (N, 4), class_ids (N,) against the
    reference's (M, 4), (M,) -> pairs (i, j) of the same class with box IoU >= min_iou; or, given the
    reference's whole-pixel boxes before rounding (ref_unrounded (M, 4)), whose boxes are a `rounding_flip`
    apart (a small box one pixel off has an IoU well under min_iou)."""
    pairs, used = [], set()
    for i in range(len(boxes)):
        candidates = [(box_iou(boxes[i], ref_boxes[j]), j) for j in range(len(ref_boxes))
                      if j not in used and ref_class_ids[j] == class_ids[i]]
        if ref_unrounded is not None:
            candidates = [(iou, j) for iou, j in candidates
                          if iou >= min_iou or rounding_flip(boxes[i], ref_boxes[j], ref_unrounded[j])]
        if candidates:
            best, j = max(candidates)
            if best >= min_iou or ref_unrounded is not None:
                pairs.append((i, j))
                used.add(j)
    return pairs


@dataclass
class MaskPair:
    """One matched pair's masks: their union in pixels, IoU, and pixels that differ; for a pair that
    disagrees, when the comparison is given a way to re-paste, the same for our mask probabilities
    pasted into the reference's box (`in_reference_box`)."""
    union: int
    iou: float
    differing: int
    in_reference_box: MaskPair | None = None

    def fails(self, min_iou: float, max_small_pixels: int) -> bool:
        """IoU < min_iou for masks of LARGE_MASK_PIXELS or more, more than max_small_pixels differing pixels
        for smaller ones."""
        if self.union >= LARGE_MASK_PIXELS:
            return self.iou < min_iou
        return self.differing > max_small_pixels


@dataclass
class ImageParity:
    """How one image's detections compare with the reference's."""
    ours: int
    reference: int
    pairs: list[tuple[int, int]]
    score_differences: list[float] = field(default_factory=list)
    box_differences_px: list[float] = field(default_factory=list)   # largest coordinate difference per pair
    masks: list[MaskPair] = field(default_factory=list)
    rounding_flips: list[int] = field(default_factory=list)   # ours matched by `rounding_flip`, IoU < MATCH_IOU

    @property
    def matched_fraction(self) -> float:
        """Matched pairs over the larger of the two detection counts."""
        return len(self.pairs) / max(self.ours, self.reference, 1)

    def mask_failures(self, min_iou: float = MIN_MASK_IOU, max_small_pixels: int = MAX_SMALL_PIXELS) -> list[str]:
        """The pairs whose masks disagree: IoU < min_iou for masks of LARGE_MASK_PIXELS or more,
        more than max_small_pixels differing pixels for smaller ones (a pixel sitting on the 0.5
        threshold may flip with float rounding, a large IoU change for a tiny mask); not the
        `paste_flips`."""
        flips = set(self.paste_flips(min_iou, max_small_pixels))
        return [f"detection {i}: mask IoU {m.iou:.4f}" if m.union >= LARGE_MASK_PIXELS else
                f"detection {i}: {m.differing} mask pixels differ"
                for (i, _), m in zip(self.pairs, self.masks) if m.fails(min_iou, max_small_pixels) and i not in flips]

    def paste_flips(self, min_iou: float = MIN_MASK_IOU, max_small_pixels: int = MAX_SMALL_PIXELS) -> list[int]:
        """Our detections whose masks disagree as pasted but agree pasted into the reference's box (known
        only when `compare_image` was given `repaste`): the boxes differ by float rounding, thousandths
        of a pixel, across the integer that a paste truncates or rounds the box to, which moves or
        stretches the whole mask by a pixel."""
        return [i for (i, _), m in zip(self.pairs, self.masks) if m.fails(min_iou, max_small_pixels)
                and m.in_reference_box is not None and not m.in_reference_box.fails(min_iou, max_small_pixels)]


def _rle(size, counts) -> dict:
    return {"size": [int(v) for v in size], "counts": counts.encode() if isinstance(counts, str) else bytes(counts)}


def mask_pair(rle: dict, ref_counts: str) -> MaskPair:
    """Our RLE dict against the reference's RLE count string of the same frame size."""
    size = rle["size"]
    a, b = mask_utils.decode([_rle(size, rle["counts"]), _rle(size, str(ref_counts))]).transpose(2, 0, 1).astype(bool)
    union = int((a | b).sum())
    return MaskPair(union, float((a & b).sum() / union) if union else 1.0, int((a ^ b).sum()))


def compare_image(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, rles: list[dict],
                  ref_boxes: np.ndarray, ref_scores: np.ndarray, ref_class_ids: np.ndarray,
                  ref_counts, repaste: Callable[[int, np.ndarray], dict] | None = None,
                  ref_unrounded: np.ndarray | None = None) -> ImageParity:
    """Our detections of one image (boxes (N, 4), scores (N,), class ids (N,), N COCO RLE dicts)
    against the reference's (boxes (M, 4), scores (M,), class ids (M,), M RLE count strings of
    masks of the same frame size).

    `repaste(i, box)`, if given, pastes our detection i's mask probabilities into `box` (4,) (the
    reference's) and returns its RLE: for the pairs whose masks disagree, to tell a mask that
    differs from one that moved with its box (`ImageParity.paste_flips`). `ref_unrounded` (M, 4), for a
    reference of whole-pixel boxes, are those boxes before rounding (see `match_detections`)."""
    pairs = match_detections(boxes, class_ids, ref_boxes, ref_class_ids, ref_unrounded=ref_unrounded)
    parity = ImageParity(len(scores), len(ref_scores), pairs)
    for i, j in pairs:
        if box_iou(boxes[i], ref_boxes[j]) < MATCH_IOU:
            parity.rounding_flips.append(i)
        parity.score_differences.append(float(abs(scores[i] - ref_scores[j])))
        parity.box_differences_px.append(float(np.abs(boxes[i] - ref_boxes[j]).max()))
        pair = mask_pair(rles[i], ref_counts[j])
        if repaste is not None and pair.fails(MIN_MASK_IOU, MAX_SMALL_PIXELS):
            pair.in_reference_box = mask_pair(repaste(i, ref_boxes[j]), ref_counts[j])
        parity.masks.append(pair)
    return parity


def repaster(mask_probs: np.ndarray, frame_hw: tuple[int, int], mask_head) -> Callable[[int, np.ndarray], dict]:
    """`repaste` for `compare_image`: detection i's mask probabilities (mask_probs (N, M, M)) pasted into
    another box (4,) of the frame, the way the model's configuration pastes (`mask_head`: its
    MaskHeadConfig), as an RLE dict."""
    from ..postprocess import masks_to_rles

    def repaste(i: int, box: np.ndarray) -> dict:
        return masks_to_rles(mask_probs[i:i + 1], np.asarray(box, np.float32)[None], frame_hw, mask_head.paste_padding,
                             mask_head.threshold, mask_head.paste)[0]
    return repaste


def read_reference_frames(reference, data: Path) -> list[np.ndarray]:
    """The RGB frames a reference was made on, from the folder `data` (../shared/data): its
    `image_sources` ("name.jpg", or "name.avi:index" for frame `index` of a video, counted from 0 in
    decoding order) or else "<image name>.jpg"; checked against its `image_sha256` when it has them."""
    names = [str(n) for n in reference["image_names"]]
    sources = [str(s) for s in reference["image_sources"]] if "image_sources" in reference else \
        [f"{n}.jpg" for n in names]
    frames = []
    for source in sources:
        name, _, index = source.partition(":")
        if index:
            capture = cv2.VideoCapture(str(data / name))
            for _ in range(int(index) + 1):
                ok, bgr = capture.read()
            capture.release()
        else:
            bgr = cv2.imread(str(data / name), cv2.IMREAD_COLOR)
            ok = bgr is not None
        if not ok:
            raise ValueError(f"{data / name}: cannot read {source}")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if "image_sha256" in reference:
        for source, frame, digest in zip(sources, frames, reference["image_sha256"]):
            if hashlib.sha256(frame.tobytes()).hexdigest() != str(digest):
                raise ValueError(f"{source}: not the frame the reference was made on (sha256 differs)")
    return frames


def compare_reference(model, reference, frames: list[np.ndarray]) -> dict[str, ImageParity]:
    """model.predict on a reference's frames (one batch) against its detections, per image name.

    The reference holds NAME/boxes (x1 y1 x2 y2 in frame pixels), NAME/scores, NAME/labels (torchvision's)
    or NAME/class_ids (the seed's), NAME/mask_counts; pairs whose masks disagree are re-pasted into
    the reference's box (`ImageParity.paste_flips`)."""
    names = [str(n) for n in reference["image_names"]]
    parities = {}
    for k, (name, frame, ours) in enumerate(zip(names, frames, model.predict(frames, masks="rle"))):
        classes = reference[f"{name}/labels"] if f"{name}/labels" in reference else reference[f"{name}/class_ids"]
        parities[name] = compare_image(ours.boxes, ours.scores, ours.class_ids, ours.rles, reference[f"{name}/boxes"],
                                       reference[f"{name}/scores"], classes, reference[f"{name}/mask_counts"],
                                       repaster(ours.mask_probs, frame.shape[:2], model.config.mask_head),
                                       seed_unrounded_boxes(reference, k))
    return parities


def seed_unrounded_boxes(reference, k: int) -> np.ndarray | None:
    """A seed reference's (bench/seed_reference.py) boxes of image k in its original pixels before the seed
    rounds them, from its boxes_normalized (y1 x1 y2 x2), windows and sizes; None for other references."""
    from ..postprocess import normalized_windows, unmolded_pixels

    name = str(reference["image_names"][k])
    if f"{name}/boxes_normalized" not in reference:
        return None
    window = normalized_windows(reference["windows"][k:k + 1], int(reference["molded_shape"][0]))[0]
    return unmolded_pixels(reference[f"{name}/boxes_normalized"][:, [1, 0, 3, 2]], window,
                           tuple(reference["original_sizes"][k]))

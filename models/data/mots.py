"""Tracks as text files people already read: MOTS (masks) and MOTChallenge (boxes).

Formats, one line per object per frame, frames counted from 1:
    MOTS (KITTI MOTS / MOTS Challenge):  frame id class_id height width rle
        rle: COCO compressed RLE counts of the object's mask (masks of one frame must not overlap)
    MOTChallenge 2D boxes:               frame,id,x,y,w,h,conf,class,visibility     (ground truth; visibility
                                                                                 the annotation's, else 1)
                                         frame,id,x,y,w,h,score,-1,-1,-1            (results)

Ground truth for tracking: `maskstream scenes write DIR --frames-per-sequence K ...` keeps
each object's `track_id` (and `visibility`) in its annotation; with `--mots` it also writes
those sequences in these formats (`write_ground_truth`) as

    DIR/tracks/<seq>.mots.txt, DIR/tracks/<seq>.mot.txt

one pair per sequence (`seq-0000`, ... in the order of the data set), frame 1 being the
sequence's first image. Ids are the scene's track ids; class ids are the data set's category ids.
The pipeline's file sinks write its tracks in the same formats (pipeline/sinks.py).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from ..errors import DataError


@dataclass
class TrackedFrame:
    """The tracked objects of one frame (a tracker's output or ground truth)."""
    track_ids: np.ndarray       # (N,) int64, > 0
    class_ids: np.ndarray       # (N,) int64
    boxes: np.ndarray           # (N, 4) float x1 y1 x2 y2, pixels
    scores: np.ndarray          # (N,) float (1 for ground truth)
    rles: list[dict]            # N COCO compressed RLE dicts {"size": [H, W], "counts": str}
    visibility: np.ndarray | None = None   # (N,) float: ground truth's fraction of each object shown, if known
    colours: np.ndarray | None = None      # (N, 3) float: each mask's mean RGB in its image, if known (the tracker's cue)
    palettes: np.ndarray | None = None     # (N, B) float: each mask's palette in its image, if known (the tracker's gate)

    def __len__(self) -> int:
        return len(self.track_ids)

    def select(self, keep) -> "TrackedFrame":
        """The objects where keep (N,) bool is true (or at indices keep)."""
        index = np.arange(len(self))[keep]
        return TrackedFrame(self.track_ids[index], self.class_ids[index], self.boxes[index], self.scores[index],
                            [self.rles[i] for i in index], None if self.visibility is None else self.visibility[index],
                            None if self.colours is None else self.colours[index],
                            None if self.palettes is None else self.palettes[index])


def counts_text(rle: dict) -> str:
    counts = rle["counts"]
    return counts.decode("ascii") if isinstance(counts, bytes) else counts


def mots_lines(frame_number: int, frame: TrackedFrame) -> list[str]:
    """MOTS text lines of one frame (frame_number from 1)."""
    return [f"{frame_number} {int(tid)} {int(cls)} {rle['size'][0]} {rle['size'][1]} {counts_text(rle)}"
            for tid, cls, rle in zip(frame.track_ids, frame.class_ids, frame.rles)]


def mot_lines(frame_number: int, frame: TrackedFrame, ground_truth: bool = False) -> list[str]:
    """MOTChallenge box lines of one frame (frame_number from 1): ground truth or results."""
    lines = []
    visibility = np.ones(len(frame)) if frame.visibility is None else frame.visibility
    for tid, cls, box, score, seen in zip(frame.track_ids, frame.class_ids, frame.boxes, frame.scores, visibility):
        x1, y1, x2, y2 = (float(v) for v in box)
        tail = f"1,{int(cls)},{float(seen):.4g}" if ground_truth else f"{float(score):.4f},-1,-1,-1"
        lines.append(f"{frame_number},{int(tid)},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{tail}")
    return lines


def without_overlaps(frame: TrackedFrame) -> TrackedFrame:
    """The frame with each pixel kept only in its highest-scoring mask (MOTS forbids overlaps);
    objects left with no pixel are dropped. Order and everything else unchanged. Only the masks
    that overlap another are decoded."""
    if len(frame) < 2:
        return frame
    pairwise = np.asarray(mask_utils.iou(frame.rles, frame.rles, [0] * len(frame)))
    overlapping = np.flatnonzero((np.triu(pairwise, 1) > 0).any(axis=0) | (np.triu(pairwise, 1) > 0).any(axis=1))
    if len(overlapping) == 0:
        return frame
    masks = mask_utils.decode([frame.rles[i] for i in overlapping]).astype(bool)   # (H, W, K)
    taken = np.zeros(masks.shape[:2], bool)
    rles, keep = list(frame.rles), np.ones(len(frame), bool)
    for k in np.argsort(-frame.scores[overlapping], kind="stable"):
        i = overlapping[k]
        own = masks[..., k] & ~taken
        taken |= own
        if not own.any():
            keep[i] = False
        elif own.sum() != masks[..., k].sum():
            rle = mask_utils.encode(np.asfortranarray(own.astype(np.uint8)))
            rles[i] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return TrackedFrame(frame.track_ids, frame.class_ids, frame.boxes, frame.scores, rles, frame.visibility).select(keep)


@dataclass
class Sequence:
    """A generated data set's sequence: its images in order and their ground truth."""
    name: str                   # seq-0000, ...
    image_ids: list[int]
    frame_indices: list[int]    # the scene's frame index of each image (its time at the scene's fps)
    width: int
    height: int
    ground_truth: list[TrackedFrame]


def read_sequences(data: dict) -> list[Sequence]:
    """A COCO mapping written by `maskstream scenes write` (images with `sequence` and `frame_index`,
    annotations with `track_id` and, where written, `visibility`) -> its sequences in order."""
    by_image = defaultdict(list)
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    grouped: dict[int, list[dict]] = defaultdict(list)
    for image in data["images"]:
        if "sequence" not in image or "frame_index" not in image:
            raise DataError(f"image {image['id']} has no 'sequence' or 'frame_index': not a sequence data set "
                             "(write one with maskstream scenes write DIR --frames-per-sequence K)")
        grouped[image["sequence"]].append(image)
    sequences = []
    for number, images in enumerate(grouped[k] for k in sorted(grouped)):
        images = sorted(images, key=lambda image: image["frame_index"])
        frames = []
        for image in images:
            anns = by_image[image["id"]]
            missing = [a["id"] for a in anns if "track_id" not in a]
            if missing:
                raise DataError(f"annotation {missing[0]} has no 'track_id'")
            frames.append(TrackedFrame(
                np.array([a["track_id"] for a in anns], np.int64).reshape(-1),
                np.array([a["category_id"] for a in anns], np.int64).reshape(-1),
                np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float64).reshape(-1, 4),
                np.ones(len(anns)), [a["segmentation"] for a in anns],
                np.array([a["visibility"] for a in anns], np.float64) if all("visibility" in a for a in anns) else None))
        sequences.append(Sequence(f"seq-{number:04d}", [image["id"] for image in images],
                                  [image["frame_index"] for image in images], images[0]["width"],
                                  images[0]["height"], frames))
    return sequences


def write_ground_truth(sequences: list[Sequence], out_dir: str | Path) -> list[Path]:
    """Each sequence's ground truth as `<seq>.mots.txt` and `<seq>.mot.txt` (ground-truth columns)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for seq in sequences:
        mots = [line for n, frame in enumerate(seq.ground_truth, 1) for line in mots_lines(n, frame)]
        mot = [line for n, frame in enumerate(seq.ground_truth, 1) for line in mot_lines(n, frame, ground_truth=True)]
        for suffix, lines in (("mots", mots), ("mot", mot)):
            path = out_dir / f"{seq.name}.{suffix}.txt"
            path.write_text("".join(line + "\n" for line in lines))
            written.append(path)
    return written

"""What a worker sends back for a frame: its instances as small records, no pixels.

`InstanceRecord` is also the instance of the wire protocol's frame record
(pipeline.protocol.FrameRecord, which re-exports it): the worker makes it from the model's
`Detections`, the pipeline publishes it, the consumer SDK reads it back. It lives here because
workers make it and never import the pipeline; it needs neither Ray nor TensorFlow, so that the
pipeline's driver and consumers can read it without either.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils

PALETTE_LEVELS = 4                    # per RGB channel: a mask's palette has 4**3 cells
PALETTE_BINS = PALETTE_LEVELS ** 3

@dataclass(frozen=True)
class InstanceRecord:
    """One detected instance: ``box`` is (x1, y1, x2, y2) in pixels, ``rle`` the mask in COCO
    compressed RLE ({"size": [height, width], "counts": str}; "mask" on the wire); ``track_id`` the
    object's identity across the stream's frames, set by the pipeline's tracking stage (0 for an
    instance in no confirmed track yet; None, and not on the wire, without tracking); ``zones`` the
    regions of the frame it stands in (None, and not on the wire, when its stream has none);
    ``dwell_s`` with zones and tracking, the seconds since its track entered each of them."""
    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]
    rle: dict = field(repr=False)
    track_id: int | None = None
    zones: tuple[str, ...] | None = None   # with zones: the regions it stands in (pipeline/zones.py)
    dwell_s: dict[str, float] | None = None  # with zones and tracking: seconds since its track entered each
    colour: tuple[float, float, float] | None = field(default=None, repr=False, compare=False)
    """The mean RGB of the mask's pixels, from the worker (the tracker's appearance cue); not on the wire."""
    palette: tuple[float, ...] | None = field(default=None, repr=False, compare=False)
    """PALETTE_BINS shares of the mask's pixels, one per palette cell (`mask_colours`), from the
    worker (the tracker's appearance gate); not on the wire."""

    @property
    def mask(self) -> np.ndarray:
        """(height, width) bool, decoded on each access."""
        return mask_utils.decode(self.rle).astype(bool)

    def to_wire(self) -> dict:
        """The instance in the header, plain JSON types, in the protocol's field order."""
        counts = self.rle["counts"]
        wire = {"class_id": int(self.class_id), "label": str(self.label), "score": float(self.score),
                "box": [float(v) for v in self.box],
                "mask": {"size": [int(v) for v in self.rle["size"]],
                         "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}}
        if self.track_id is not None:
            wire["track_id"] = int(self.track_id)
        if self.zones is not None:
            wire["zones"] = list(self.zones)
        if self.dwell_s is not None:
            wire["dwell_s"] = {name: float(seconds) for name, seconds in self.dwell_s.items()}
        return wire

    @classmethod
    def from_wire(cls, data: dict) -> InstanceRecord:
        zones = data.get("zones")
        return cls(data["class_id"], data["label"], data["score"], tuple(data["box"]), data["mask"],
                   data.get("track_id"), None if zones is None else tuple(zones), data.get("dwell_s"))


def instance_records(detections, pixels: np.ndarray | None = None) -> tuple[InstanceRecord, ...]:
    """A frame's `models.Detections` (predicted with masks="rle") as instance records; with the
    frame's pixels (H, W, 3) uint8 RGB, each with its mask's mean `colour` and `palette` (for the tracker)."""
    none = [None] * len(detections.rles)
    colours, palettes = mask_colours(pixels, detections.rles) if pixels is not None else (none, none)
    return tuple(InstanceRecord(int(class_id), label, float(score), tuple(float(v) for v in box), rle,
                                colour=None if colour is None else tuple(float(v) for v in colour),
                                palette=None if palette is None else tuple(float(v) for v in palette))
                 for class_id, label, score, box, rle, colour, palette
                 in zip(detections.class_ids, detections.labels, detections.scores, detections.boxes,
                        detections.rles, colours, palettes))


# -- COCO RLE runs -----------------------------------------------------------------------------

def rle_runs(rles: list[dict]) -> list[np.ndarray]:
    """COCO compressed RLEs -> their run lengths (alternating 0s and 1s, column-major, from 0s),
    each (R,) int64; decoded for all masks at once (pycocotools' rleFrString, vectorised)."""
    strings = [r["counts"].encode("ascii") if isinstance(r["counts"], str) else bytes(r["counts"]) for r in rles]
    if not strings:
        return []
    chars = np.frombuffer(b"".join(strings), np.uint8).astype(np.int64) - 48
    last_char = (chars & 0x20) == 0                         # a value's last character has no continuation bit
    value_start = np.flatnonzero(np.concatenate([[True], last_char[:-1]]))
    value_of_char = np.cumsum(np.concatenate([[0], last_char[:-1]]))
    shift = 5 * (np.arange(chars.size) - value_start[value_of_char])
    values = np.add.reduceat((chars & 0x1F) << shift, value_start)
    negative = (chars[last_char] & 0x10) != 0
    values[negative] -= np.left_shift(1, shift[last_char][negative] + 5)
    # from the fourth value of a mask on, each is the difference to the value two before it: a
    # running sum along each mask's odd values and along its even ones from the third
    per_mask = np.add.reduceat(last_char, np.concatenate([[0], np.cumsum([len(s) for s in strings])[:-1]]))
    mask_of_value = np.repeat(np.arange(len(strings)), per_mask)
    index = np.arange(values.size) - np.repeat(np.cumsum(per_mask) - per_mask, per_mask)
    runs = values.copy()
    for parity, first in ((0, 2), (1, 1)):
        chain = np.flatnonzero((index % 2 == parity) & (index >= first))
        if chain.size == 0:
            continue
        sums = np.cumsum(values[chain])
        owner = mask_of_value[chain]
        starts = np.flatnonzero(np.concatenate([[True], owner[1:] != owner[:-1]]))
        runs[chain] = sums - np.repeat(sums[starts] - values[chain[starts]], np.diff(np.append(starts, chain.size)))
    return np.split(runs, np.cumsum(per_mask)[:-1])


def runs_of_ones(runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A mask's run lengths (R,) from `rle_runs` (alternating 0s and 1s, from 0s) -> (starts,
    lengths) of its runs of 1s: each one's flat column-major index and its length."""
    ends = np.cumsum(runs)
    return (ends - runs)[1::2], runs[1::2]


def mask_colours(pixels: np.ndarray, rles: list[dict], samples: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The colours of each mask's pixels: pixels (H, W, 3) uint8, N COCO RLEs of that frame ->
    (means (N, 3) float64, palettes (N, PALETTE_BINS) float64). A palette is the share of the
    mask's pixels in each cell of RGB cut into PALETTE_LEVELS levels per channel (cell `palette_cell`);
    an empty mask gives a mean and a palette of 0. A mask of more than `samples` pixels is sampled
    evenly along its runs (every area // samples-th pixel): a few thousand pixel reads per frame,
    however large the objects, within about one level of the full mean."""
    if not rles:
        return np.zeros((0, 3)), np.zeros((0, PALETTE_BINS))
    height = pixels.shape[0]
    starts, lengths = zip(*(runs_of_ones(runs) for runs in rle_runs(rles)))
    areas = np.array([part.sum() for part in lengths], np.int64)
    first_one = np.concatenate(starts)               # (R,) flat column-major index of each run of 1s
    one_length = np.concatenate(lengths)
    one_end = np.cumsum(one_length)                  # the masks' 1s laid end to end
    stride = np.maximum(areas // samples, 1)
    taken = -(-areas // stride)                      # (N,) samples per mask
    owner = np.repeat(np.arange(len(rles)), taken)
    k = np.arange(taken.sum()) - np.repeat(np.cumsum(taken) - taken, taken)
    position = (np.cumsum(areas) - areas)[owner] + k * stride[owner]      # among the laid-out 1s
    run = np.searchsorted(one_end, position, side="right")
    index = first_one[run] + position - (one_end[run] - one_length[run])
    read = pixels[index % height, index // height]                        # (S, 3) uint8
    values = read.astype(np.float64)
    counts = np.maximum(np.bincount(owner, minlength=len(rles)), 1)[:, None]
    sums = np.stack([np.bincount(owner, values[:, c], len(rles)) for c in range(3)], axis=1)
    cells = np.bincount(owner * PALETTE_BINS + palette_cell(read), minlength=len(rles) * PALETTE_BINS)
    return sums / counts, cells.reshape(len(rles), PALETTE_BINS) / counts


def palette_cell(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...,) int64 its palette cell: r, g, b each cut into PALETTE_LEVELS levels."""
    level = rgb.astype(np.int64) * PALETTE_LEVELS // 256
    return (level[..., 0] * PALETTE_LEVELS + level[..., 1]) * PALETTE_LEVELS + level[..., 2]

"""Object identities across frames: a per-stream multi-object tracker over Mask R-CNN's detections.

    tracker = StreamTracker(TrackingConfig())            # one per stream
    for frame in frames_in_seq_order:
        step = tracker.update(boxes, scores, class_ids, rles, pts, colours=colours, palettes=palettes)
        step.track_ids      # (N,) int64, one per detection; 0: not (yet) part of a track
        step.ended          # (E,) int64, ids of tracks that ended at this frame
    tracker.finish()        # (E,) int64, the tracks still alive when the stream ends

Inputs per frame: boxes (N, 4) float x1 y1 x2 y2 in pixels, scores (N,), class_ids (N,) ints,
rles N COCO compressed RLE dicts (`{"size": [H, W], "counts": str}`) or None, pts the frame's
presentation time in seconds (strictly increasing frames; equal pts predict no motion),
colours (N, 3) the mean RGB of each detection's mask pixels and palettes (N, 64) their share in
each cell of a coarse RGB grid (both `workers.results.mask_colours`; the workers attach them to
each instance), or None.

How a frame is associated (ByteTrack's stages, with masks where boxes overlap):
1. Every track's box is predicted to `pts` by a constant-velocity Kalman filter on
   (cx, cy, w, h) whose step is the time since the track's last update: a frame dropped in
   live mode is a longer step, not a teleport. Tracks unseen for more than `max_age_s` end first.
2. Affinity of a track and a detection of the same class (0 across classes): box IoU of the
   predicted box (`bytetrack-box`, `sort`); with `bytetrack-mask`, for contested pairs (a track
   with two or more detections whose box IoU with it reaches `mask_gate`, or a detection with
   two or more such tracks: crowds, occlusion) a mix of it and the mask IoU of the track's last
   mask (moved by the predicted motion with `mask_motion: shift`) and the detection's; a lone
   pair keeps its box IoU, so a mask that changed shape over a gap does not break its track.
   `motion_gate` can also rule out pairs far from the prediction (Mahalanobis). With palettes,
   every stage rules out pairs whose colours disagree (`appearance_gate`): less than that share of
   the detection's pixels fall in colours its track shows (each cell counted up to PALETTE_SPREAD
   times the track's share, so that the part of an object left visible behind another, a subset
   of its colours, still passes); a car of another colour taking the place of one that left, or
   passing in front of it, does not take its id.
   Each stage is an optimal assignment (`linear_sum_assignment`) of the pairs whose affinity
   (times the detection's score where `fuse_score`) reaches the stage's threshold.
3. Stages (`sort`: the first alone, over every track): confident detections (score >=
   `high_score`) against the confirmed tracks, lost ones included, at `match_threshold`; weak
   detections (`low_score` <= score < `high_score`) against the confirmed tracks left that were
   seen in the previous frame, at `low_match_threshold` (a partly hidden object whose score
   dropped keeps its track); the confident detections left against the unconfirmed tracks; with
   `recover_lost`, those still left against the lost tracks where they were last seen (OC-SORT's
   observation-centric recovery: an object that stopped is not where its velocity said).
   With colours (`reidentify`), a last stage matches the confident detections still left against
   the confirmed tracks still left by where and what: within `reid_distance` of the track's size
   from where it was last seen or is predicted, and alike in colour (with palettes, at least
   `reid_share` of the detection's pixels in the track's colours; without, a mean colour within
   `reid_colour` of the track's; the track's colours are running means of its detections'). A
   sliver of an object behind another, or one back after a few frames hidden, whose box no longer
   overlaps its track's, keeps its id instead of starting a new track; the colours keep that
   from taking a neighbour's id.
4. Confident detections left over that score at least `new_track_score` start tracks. A new
   track gets its id at its `min_hits`-th detection in consecutive frames (before that its
   detections carry id 0; those of a stream's first frame get theirs at once, as in ByteTrack);
   one missed before then is dropped without an id.

A track never changes class (only detections of its class are candidates). Ids count from 1
per tracker, in the order tracks are confirmed, so the same detections give the same ids.
Pure numpy, scipy and pycocotools: no Ray, no ZeroMQ.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

from models.config import ConfigError, from_dict
from workers.results import PALETTE_BINS, rle_runs

METHODS = ("bytetrack-mask", "bytetrack-box", "sort")
MASK_MOTIONS = ("shift", "none")
_NO_MATCH = 1e6          # assignment cost of a pair below its threshold
SHIFT_FRACTION = 0.05    # mask_motion shift: masks move when the prediction moved more than this of the box
PALETTE_SPREAD = 2.0     # appearance gate: a detection may show a palette cell up to twice its track's share
SOLID_FILL = 0.3         # occlusion: a detection whose mask fills less of its box (a painted line) hides nothing


@dataclass
class TrackingConfig:
    """The tracker's settings: the pipeline config's `tracking:` section."""

    enabled: bool = True
    """Give every published instance a track id; false publishes exactly what an untracked run does."""
    method: str = "bytetrack-box"
    """Association: `bytetrack-box` (ByteTrack's stages, box IoU), `bytetrack-mask` (the same, with
    mask IoU deciding between overlapping boxes) or `sort` (one stage over the confident detections,
    box IoU). bench/tracking.py measured box as good as mask on model detections and better on
    exact masks and dropped frames (a thin or half-hidden mask changes shape between frames)."""
    high_score: float = 0.7
    """Detections scoring at least this are confident: matched first, and may start tracks (0.85
    did better on the tuning seeds, not on the benchmark's: docs/tracking.md)."""
    low_score: float = 0.5
    """Detections in [low_score, high_score) only continue tracks (stage 2); lower ones are ignored.
    In the stream it is at most the publish threshold (TrackingStage), so every instance published
    is tracked. The workers keep detections down to it, with their masks: 0.1 (ByteTrack's) cost
    the default model 45% more time a frame on real footage and measured no better than 0.5 on
    the tuning seeds (bench/tracking_sweep.py; docs/tracking.md)."""
    new_track_score: float = 0.8
    """A confident detection left unmatched starts a track if it scores at least this (at or
    below `high_score`, every confident one does)."""
    match_threshold: float = 0.2
    """Stage 1 (and unconfirmed tracks): the least affinity (IoU-like, 0-1) of a match."""
    low_match_threshold: float = 0.5
    """Stage 2 (weak detections): the least affinity of a match."""
    fuse_score: bool = True
    """Confident detections: weigh a pair's affinity by the detection's score (ByteTrack's fuse_score),
    so that of two similar candidates the surer one wins."""
    mask_weight: float = 0.8
    """`bytetrack-mask`: affinity of a contested pair = (1 - mask_weight) * box IoU + mask_weight * mask IoU."""
    mask_gate: float = 0.1
    """`bytetrack-mask`: boxes overlapping with at least this IoU are rivals; where a track or a
    detection has two or more, mask IoU joins box IoU for those pairs (the others keep box IoU alone)."""
    mask_motion: str = "shift"
    """`bytetrack-mask`: a track's expected mask is its last mask moved by the predicted box motion
    (`shift`; moves under 5% of the box are left out, they change mask IoU little) or its last mask
    where it was (`none`)."""
    max_age_s: float = 1.0
    """A track unseen for more than this many seconds ends; within it, a re-found object keeps its id."""
    min_hits: int = 2
    """Detections in consecutive frames before a new track gets an id (1: at once)."""
    recover_lost: bool = True
    """A fourth stage: confident detections left over against lost tracks at their last seen box."""
    occlusion: bool = True
    """Occlusion-aware: a detection lying mostly inside a confirmed track's expected box (what is
    left of an object behind another, or cut by the frame) continues that track (a last stage);
    a detection whose missing part is covered by other detections does not move or shrink its track."""
    partial_containment: float = 0.8
    """`occlusion`: the least fraction of the smaller of a detection's and a track's expected box
    (clipped to the frame) lying inside the other for the last stage to match them."""
    occluded_visible: float = 0.9
    """`occlusion`: a matched detection covering less than this fraction of its track's expected
    box, the rest mostly covered by other detections, is occluded: the track coasts."""
    reidentify: bool = True
    """With colours: a last stage matches confident detections left over to confirmed tracks left
    over by distance and mask colour (see the module docstring); no effect without colours."""
    reid_distance: float = 2.5
    """`reidentify`: the farthest a detection's box centre may lie from the track's last seen or
    predicted centre, in the track's box sizes (its larger side)."""
    reid_colour: float = 30.0
    """`reidentify` without palettes: the largest distance (RGB, 0-255 per channel) of the
    detection's mean mask colour from the track's."""
    reid_share: float = 0.8
    """`reidentify` with palettes: the least share of the detection's pixels in its track's
    colours (as `appearance_gate` counts it; stricter, as this stage has no box overlap to go by)."""
    appearance_gate: float = 0.7
    """With palettes: the least share of a detection's pixels (by its palette) that its track's
    colours account for, for any stage to match them; 0: no gate. bench/tracking.py measured it
    (docs/tracking.md): it stops tracks passing to other objects of another colour."""
    colour_smoothing: float = 0.3
    """The weight of each new detection's colour (and palette) in its track's running means (of a
    detection showing the object whole: see `partial_view_power`)."""
    partial_view_power: float = 0.75
    """A detection whose box is a fraction f < 1 of the largest its track has shown lately (its
    `full_view_half_life_s`) weighs `colour_smoothing` * f ** this in the running means: a car half
    behind another, or a sliver, changes what its track knows of its colours little, and the object
    seen whole again still passes the appearance gate. 0: every detection weighs the same.
    bench/tracking_sweep.py picked it (docs/tracking.md)."""
    full_view_half_life_s: float = 1.4
    """`partial_view_power`: the largest box a track has shown counts half as much after this many
    seconds (an object driving away shrinks for good)."""
    motion_gate: float = 0.0
    """Pairs whose box lies further from the track's prediction than this squared Mahalanobis
    distance (over cx, cy, w, h; 9.49 is chi-square's 95% for 4 values) are not matched; 0: no gate."""
    measurement_noise: float = 0.05
    """Kalman filter: std of a detected box's centre and size, as a fraction of the box's size."""
    acceleration_noise: float = 4.0
    """Kalman filter: std of the change of velocity, in box sizes per second squared."""
    initial_velocity_std: float = 1.5
    """Kalman filter: std of a new track's unknown velocity, in box sizes per second."""

    def validate(self, path: str = "tracking") -> None:
        """Raise ConfigError naming the first key with a bad value."""
        def require(ok: bool, key: str, problem: str) -> None:
            if not ok:
                raise ConfigError(f"{path}.{key}: {problem}")
        require(self.method in METHODS, "method", f"must be one of {', '.join(METHODS)}")
        require(0 <= self.low_score <= self.high_score <= 1, "low_score", "need 0 <= low_score <= high_score <= 1")
        require(0 <= self.new_track_score <= 1, "new_track_score", "must be in [0, 1]")
        require(0 < self.match_threshold <= 1, "match_threshold", "must be in (0, 1]")
        require(0 < self.low_match_threshold <= 1, "low_match_threshold", "must be in (0, 1]")
        require(0 <= self.mask_weight <= 1, "mask_weight", "must be in [0, 1]")
        require(0 <= self.mask_gate <= 1, "mask_gate", "must be in [0, 1]")
        require(self.mask_motion in MASK_MOTIONS, "mask_motion", f"must be one of {', '.join(MASK_MOTIONS)}")
        require(self.max_age_s >= 0, "max_age_s", "must be >= 0")
        require(self.min_hits >= 1, "min_hits", "must be >= 1")
        require(self.motion_gate >= 0, "motion_gate", "must be >= 0 (0: no gate)")
        require(self.reid_distance >= 0, "reid_distance", "must be >= 0")
        require(self.reid_colour >= 0, "reid_colour", "must be >= 0")
        require(0 <= self.reid_share <= 1, "reid_share", "must be in [0, 1]")
        require(0 <= self.appearance_gate <= 1, "appearance_gate", "must be in [0, 1] (0: no gate)")
        require(0 < self.colour_smoothing <= 1, "colour_smoothing", "must be in (0, 1]")
        require(self.partial_view_power >= 0, "partial_view_power", "must be >= 0 (0: every view weighs the same)")
        require(self.full_view_half_life_s > 0, "full_view_half_life_s", "must be positive")
        require(self.measurement_noise > 0, "measurement_noise", "must be positive")
        require(self.acceleration_noise >= 0, "acceleration_noise", "must be >= 0")
        require(self.initial_velocity_std >= 0, "initial_velocity_std", "must be >= 0")


@dataclass
class TrackStep:
    """What one frame did to the tracks."""
    track_ids: np.ndarray      # (N,) int64 per detection of the frame, 0 where it belongs to no confirmed track
    ended: np.ndarray          # (E,) int64 ids of tracks that ended at this frame, ascending


# -- geometry ----------------------------------------------------------------------------------

def boxes_to_state(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x1 y1 x2 y2 -> (N, 4) cx cy w h."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    size = np.maximum(boxes[:, 2:] - boxes[:, :2], 1.0)
    return np.concatenate([boxes[:, :2] + size / 2, size], axis=1)


def state_to_boxes(state: np.ndarray) -> np.ndarray:
    """(N, 4) cx cy w h -> (N, 4) x1 y1 x2 y2 (sizes at least one pixel)."""
    half = np.maximum(state[:, 2:], 1.0) / 2
    return np.concatenate([state[:, :2] - half, state[:, :2] + half], axis=1)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x1 y1 x2 y2 -> (N,) areas (0 for empty boxes)."""
    return np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)


def box_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, 4) and (B, 4) x1 y1 x2 y2 -> (A, B) intersection areas."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    return np.prod(np.clip(hi - lo, 0, None), axis=2)


def box_containment(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, 4) and (B, 4) -> (A, B) intersection over the smaller box's area."""
    inter = box_intersection(a, b)
    return inter / np.maximum(np.minimum(box_area(a)[:, None], box_area(b)[None, :]), 1e-9)


def covered_fraction(regions: np.ndarray, own: np.ndarray, others: np.ndarray, samples: int = 8) -> np.ndarray:
    """(K, 4) regions, (K, 4) own boxes, (M, 4) other boxes -> (K,) the fraction of each region
    outside its own box that other boxes cover (on a samples x samples grid; 1 where nothing is outside)."""
    if len(regions) == 0:
        return np.zeros(0)
    t = (np.arange(samples) + 0.5) / samples
    xs = regions[:, 0:1] + t[None, :] * (regions[:, 2:3] - regions[:, 0:1])         # (K, S)
    ys = regions[:, 1:2] + t[None, :] * (regions[:, 3:4] - regions[:, 1:2])
    px = np.repeat(xs, samples, axis=1)                                              # (K, S*S)
    py = np.tile(ys, (1, samples))

    def inside(boxes):   # (K, S*S) for one box per region, or (K, S*S) any of `others`
        return ((px >= boxes[:, 0:1]) & (px < boxes[:, 2:3]) & (py >= boxes[:, 1:2]) & (py < boxes[:, 3:4]))
    outside_own = ~inside(own)
    if len(others):
        hit = ((px[..., None] >= others[:, 0]) & (px[..., None] < others[:, 2])
               & (py[..., None] >= others[:, 1]) & (py[..., None] < others[:, 3])).any(axis=2)
    else:
        hit = np.zeros_like(outside_own)
    rest = outside_own.sum(axis=1)
    return np.where(rest > 0, (hit & outside_own).sum(axis=1) / np.maximum(rest, 1), 1.0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, 4) and (B, 4) x1 y1 x2 y2 -> (A, B) IoU."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def colour_weights(areas: np.ndarray, full_areas: np.ndarray, elapsed: np.ndarray, smoothing: float,
                   power: float, half_life: float) -> tuple[np.ndarray, np.ndarray]:
    """How much each detection's colours count in its track's running means, by how much of the
    object it shows. areas (K,) the detections' box areas, full_areas (K,) the largest box area
    each track has shown, elapsed (K,) seconds since that track's last update -> (weights (K,),
    the tracks' new full areas (K,)). The full area halves every `half_life` seconds and is
    raised to the detection's own area where that is larger; a detection showing a fraction f of
    it (at most 1, the full area being at least its own) weighs smoothing * f ** power."""
    full = np.maximum(full_areas * 0.5 ** (np.maximum(elapsed, 0.0) / half_life), areas)
    fraction = areas / np.maximum(full, 1e-9)
    return smoothing * fraction ** power, full


def palette_share(tracks: np.ndarray, dets: np.ndarray, spread: float = PALETTE_SPREAD) -> np.ndarray:
    """Tracks' palettes (K, B) and detections' (D, B), each a share per colour cell -> (K, D) the
    share of each detection's pixels its track's colours account for: sum over cells of
    min(detection's share, spread * track's share). 1 for a detection showing the track's colours
    or a part of them (up to `spread` times as concentrated); low for one of other colours."""
    return np.minimum(dets[None, :, :], spread * tracks[:, None, :]).sum(axis=2)


# -- moving masks ------------------------------------------------------------------------------

def shift_masks(runs: list[np.ndarray], height: int, width: int, offsets: np.ndarray) -> list[dict]:
    """Masks given by their runs (`rle_runs`) moved by offsets (K, 2) whole pixels (dx, dy) -> COCO
    compressed RLEs, all in one pass. Column-major, so a vertical move wraps the pixels within
    |dy| of the top or bottom edge into the next column (a small error, only for masks touching
    those edges); what leaves the frame is cut off."""
    if not runs:
        return []
    area = height * width
    lengths = np.array([len(r) for r in runs])
    first = np.cumsum(lengths) - lengths
    ends = np.cumsum(np.concatenate(runs))
    ends -= np.repeat(ends[first] - np.concatenate(runs)[first], lengths)      # each run's end within its mask
    shift = np.asarray(offsets, np.int64) @ np.array([height, 1])
    ends = np.clip(ends + np.repeat(shift, lengths), 0, area)
    counts = np.diff(ends, prepend=0)
    counts[first] = ends[first]                                                 # each mask starts at 0
    rest = area - ends[first + lengths - 1]                                     # what is left at the end is 0s
    odd = lengths % 2 == 1
    counts[(first + lengths - 1)[odd]] += rest[odd]
    objects = []
    for k, part in enumerate(np.split(counts, np.cumsum(lengths)[:-1])):
        part = part.tolist()
        if not odd[k]:
            part.append(int(rest[k]))
        objects.append({"counts": part, "size": [height, width]})
    return mask_utils.frPyObjects(objects, height, width)


# -- the tracker -------------------------------------------------------------------------------

class StreamTracker:
    """Tracks of one stream. Feed its frames in order with `update`; see the module docstring."""

    def __init__(self, config: TrackingConfig | None = None, first_id: int = 1):
        """`first_id`: the id the first confirmed track gets (ids count up from it)."""
        self.config = config if config is not None else TrackingConfig()
        self.config.validate()
        self.next_id = int(first_id)
        self.last_pts: float | None = None
        self.mean = np.zeros((0, 8))         # (T, 8) cx cy w h and their velocities (pixels, pixels/s)
        self.cov = np.zeros((0, 4, 3))       # (T, 4, 3) per coordinate: var(pos), cov(pos, vel), var(vel)
        self.updated_pts = np.zeros(0)       # (T,) pts of the last update (where `mean` was measured)
        self.seen_pts = np.zeros(0)          # (T,) pts of the last detection
        self.class_ids = np.zeros(0, np.int64)
        self.ids = np.zeros(0, np.int64)     # 0 while unconfirmed
        self.hits = np.zeros(0, np.int64)    # detections in consecutive frames so far (capped at min_hits)
        self.masks: list[dict | None] = []   # bytetrack-mask: last mask per track (COCO RLE) or None
        self.mask_centres = np.zeros((0, 2))  # (T, 2) box centre the last mask was seen at
        self.colours = np.full((0, 3), np.nan)  # (T, 3) running mean RGB of the track's masks (NaN: none seen)
        self.palettes = np.full((0, PALETTE_BINS), np.nan)  # (T, B) running mean palette (NaN: none seen)
        self.full_areas = np.zeros(0)        # (T,) the largest box area shown lately (`colour_weights`)
        self.image_size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def snapshot(self) -> StreamTracker:
        """An independent copy of the tracker (its arrays copied; masks are never changed in place)."""
        copy = object.__new__(StreamTracker)
        copy.__dict__ = {name: value.copy() if isinstance(value, (np.ndarray, list)) else value
                         for name, value in self.__dict__.items()}
        return copy

    # -- motion ---------------------------------------------------------------------------------

    def _noise_scale(self, mean: np.ndarray) -> np.ndarray:
        """(T, 8) -> (T, 4) the size each coordinate's noise scales with: w for cx and w, h for cy and h."""
        size = np.maximum(mean[:, 2:4], 1.0)
        return np.concatenate([size, size], axis=1)

    def _predicted(self, pts: float) -> tuple[np.ndarray, np.ndarray]:
        """Every track's state and covariance moved to time pts: ((T, 8), (T, 4, 3))."""
        dt = np.maximum(pts - self.updated_pts, 0.0)[:, None]                 # (T, 1)
        mean = self.mean.copy()
        mean[:, :4] += dt * mean[:, 4:]
        accel = (self.config.acceleration_noise * self._noise_scale(self.mean)) ** 2
        pp, pv, vv = self.cov[..., 0], self.cov[..., 1], self.cov[..., 2]
        cov = np.stack([pp + 2 * dt * pv + dt ** 2 * vv + accel * dt ** 4 / 4,
                        pv + dt * vv + accel * dt ** 3 / 2,
                        vv + accel * dt ** 2], axis=-1)
        return mean, cov

    def _last_seen(self) -> np.ndarray:
        """(T, 8) every track's state where it was last updated, without motion since."""
        state = self.mean.copy()
        state[:, :2] = self.mask_centres
        return state

    def _measure(self, index: np.ndarray, mean: np.ndarray, cov: np.ndarray, boxes: np.ndarray) -> None:
        """Kalman update of tracks `index` (predicted `mean`, `cov` of those tracks) with `boxes`."""
        measured = boxes_to_state(boxes)
        noise = (self.config.measurement_noise * self._noise_scale(mean)) ** 2
        pp, pv, vv = cov[..., 0], cov[..., 1], cov[..., 2]
        s = pp + noise
        gain_p, gain_v = pp / s, pv / s
        residual = measured - mean[:, :4]
        mean = mean.copy()
        mean[:, :4] += gain_p * residual
        mean[:, 4:] += gain_v * residual
        mean[:, 2:4] = np.maximum(mean[:, 2:4], 1.0)
        self.mean[index] = mean
        self.cov[index] = np.stack([(1 - gain_p) * pp, (1 - gain_p) * pv, vv - gain_v * pv], axis=-1)

    def _new_tracks(self, boxes: np.ndarray, class_ids: np.ndarray, masks: list, colours: np.ndarray,
                    palettes: np.ndarray, pts: float) -> None:
        state = boxes_to_state(boxes)
        scale = self._noise_scale(np.concatenate([state, np.zeros_like(state)], axis=1))
        cov = np.stack([(self.config.measurement_noise * scale) ** 2, np.zeros_like(scale),
                        (self.config.initial_velocity_std * scale) ** 2], axis=-1)
        n = len(boxes)
        self.mean = np.concatenate([self.mean, np.concatenate([state, np.zeros_like(state)], axis=1)])
        self.cov = np.concatenate([self.cov, cov])
        self.updated_pts = np.concatenate([self.updated_pts, np.full(n, pts)])
        self.seen_pts = np.concatenate([self.seen_pts, np.full(n, pts)])
        self.class_ids = np.concatenate([self.class_ids, class_ids.astype(np.int64)])
        self.ids = np.concatenate([self.ids, np.zeros(n, np.int64)])
        self.hits = np.concatenate([self.hits, np.ones(n, np.int64)])
        self.masks += masks
        self.mask_centres = np.concatenate([self.mask_centres, state[:, :2]])
        self.colours = np.concatenate([self.colours, colours])
        self.palettes = np.concatenate([self.palettes, palettes])
        self.full_areas = np.concatenate([self.full_areas, box_area(boxes)])

    def _keep(self, keep: np.ndarray) -> None:
        """Keep only tracks where keep (T,) bool is true."""
        old = np.flatnonzero(keep)
        for name in ("mean", "cov", "updated_pts", "seen_pts", "class_ids", "ids", "hits", "mask_centres", "colours",
                     "palettes", "full_areas"):
            setattr(self, name, getattr(self, name)[keep])
        self.masks = [self.masks[i] for i in old]

    # -- association ------------------------------------------------------------------------------

    def _expected_masks(self, tracks: np.ndarray, centres: np.ndarray) -> list[dict | None]:
        """The masks tracks (K,) are expected to show with predicted box centres (K, 2)."""
        masks = [self.masks[i] for i in tracks]
        if self.config.mask_motion == "none":
            return masks
        offsets = np.round(centres - self.mask_centres[tracks]).astype(np.int64)
        # a move under SHIFT_FRACTION of the box changes mask IoU little: those masks stay as they are
        far = (np.abs(offsets) > SHIFT_FRACTION * self.mean[tracks, 2:4]).any(axis=1)
        moving = [k for k, m in enumerate(masks) if m is not None and far[k]]
        if moving:
            height, width = masks[moving[0]]["size"]
            moved = shift_masks(rle_runs([masks[k] for k in moving]), height, width, offsets[moving])
            for k, mask in zip(moving, moved):
                masks[k] = mask
        return masks

    def _alike(self, tracks: np.ndarray, dets: np.ndarray, class_ids: np.ndarray,
               palettes: np.ndarray | None) -> np.ndarray:
        """(K, D) bool: tracks (K,) and detections (D,) that may be one object: the same class and,
        with palettes on both sides, colours within `appearance_gate`."""
        alike = self.class_ids[tracks][:, None] == class_ids[dets][None, :]
        if palettes is not None and self.config.appearance_gate > 0:
            share = palette_share(self.palettes[tracks], palettes[dets])     # NaN: no palette seen yet
            alike &= ~(share < self.config.appearance_gate)
        return alike

    def _affinity(self, tracks: np.ndarray, dets: np.ndarray, predicted: np.ndarray, predicted_cov: np.ndarray,
                  boxes: np.ndarray, class_ids: np.ndarray, rles: list | None,
                  palettes: np.ndarray | None) -> np.ndarray:
        """(K, D) affinity in [0, 1] of tracks (K,) and detections (D,); 0 where not `_alike`."""
        pred_boxes = self._expected_boxes(predicted[tracks])
        affinity = box_iou(pred_boxes, boxes[dets])
        affinity *= self._alike(tracks, dets, class_ids, palettes)
        cfg = self.config
        if cfg.motion_gate > 0:     # squared Mahalanobis distance of each box to each prediction
            variance = predicted_cov[tracks, :, 0] + (cfg.measurement_noise * self._noise_scale(predicted[tracks])) ** 2
            residual = boxes_to_state(boxes[dets])[None, :, :] - predicted[tracks, None, :4]
            affinity[np.sum(residual ** 2 / variance[:, None, :], axis=2) > cfg.motion_gate] = 0.0
        overlap = affinity >= max(cfg.mask_gate, 1e-9)
        # masks decide where boxes leave a choice: pairs of a track with two or more detections whose
        # boxes overlap it (or of a detection with two or more tracks); a lone pair keeps its box IoU,
        # so a mask that changed shape since it was seen (a walker's legs, a car growing as it nears,
        # over a gap of dropped frames) does not break a track that has no rival
        contested = overlap & ((overlap.sum(axis=1) > 1)[:, None] | (overlap.sum(axis=0) > 1)[None, :])
        if cfg.method != "bytetrack-mask" or rles is None or cfg.mask_weight == 0 or not contested.any():
            return affinity
        rows = np.flatnonzero(contested.any(axis=1))
        expected = dict(zip(rows.tolist(), self._expected_masks(tracks[rows], predicted[tracks[rows], :2])))
        for class_id in np.unique(self.class_ids[tracks[rows]]):     # one mask IoU call per class
            r = [k for k in rows.tolist() if self.class_ids[tracks[k]] == class_id and expected[k] is not None]
            c = np.flatnonzero(contested[r].any(axis=0)) if r else []
            if len(c) == 0:
                continue
            mask_iou = np.asarray(mask_utils.iou([expected[k] for k in r], [rles[dets[j]] for j in c],
                                                 [0] * len(c))).reshape(len(r), len(c))
            block = np.ix_(r, c)
            mixed = (1 - cfg.mask_weight) * affinity[block] + cfg.mask_weight * mask_iou
            affinity[block] = np.where(contested[block], mixed, affinity[block])
        return affinity

    def _reid_affinity(self, tracks: np.ndarray, dets: np.ndarray, predicted: np.ndarray, boxes: np.ndarray,
                       class_ids: np.ndarray, colours: np.ndarray, palettes: np.ndarray | None) -> np.ndarray:
        """(K, D) affinity in [0, 1] of tracks (K,) and detections (D,) by where and what: 0 beyond
        `reid_distance` track sizes from both the last seen and the predicted centre, across
        classes, or unlike in colour (with palettes: a palette share under `reid_share`; without:
        a mean colour beyond `reid_colour` from the track's); else the nearer and the more alike
        in colour, the higher (each counting half)."""
        cfg = self.config
        centres = boxes_to_state(boxes[dets])[:, :2]                                     # (D, 2)
        size = np.maximum(self.mean[tracks, 2:4], 1.0).max(axis=1)[:, None]               # (K, 1)
        distance = np.minimum(np.linalg.norm(predicted[tracks, None, :2] - centres[None], axis=2),
                              np.linalg.norm(self.mask_centres[tracks, None] - centres[None], axis=2)) / size
        if palettes is not None:     # the part of an object showing keeps its colours, not their mean
            share = palette_share(self.palettes[tracks], palettes[dets])                # NaN: none seen yet
            alike, unlike = share >= cfg.reid_share, 1 - share
        else:
            colour = np.linalg.norm(self.colours[tracks, None] - colours[dets][None], axis=2)
            alike, unlike = colour < cfg.reid_colour, colour / max(cfg.reid_colour, 1e-9)
        near = (distance < cfg.reid_distance) & alike
        near &= self.class_ids[tracks][:, None] == class_ids[dets][None, :]
        score = 1 - distance / max(cfg.reid_distance, 1e-9) / 2 - unlike / 2
        return np.where(near, np.clip(score, 1e-6, 1.0), 0.0)

    def _expected_boxes(self, state: np.ndarray) -> np.ndarray:
        """(K, 8) states -> (K, 4) their boxes clipped to the frame (where its size is known):
        what a detection of an object partly out of the frame can show."""
        boxes = state_to_boxes(state[:, :4])
        if self.image_size is not None:
            height, width = self.image_size
            boxes = np.clip(boxes, 0, [width, height, width, height])
        return boxes

    def _occluded(self, expected: np.ndarray, dets: np.ndarray, considered: np.ndarray, boxes: np.ndarray,
                  rles: list | None) -> np.ndarray:
        """(K,) bool: whether detection dets[k] shows only part of its track's expected box
        expected[k] (it lies inside it, covering less than `occluded_visible` of it) because other
        detections of the frame (`considered`) cover most of the rest with their boxes; with masks,
        only detections whose mask fills at least SOLID_FILL of their box hide anything (a painted
        line's long box hides nothing). Boxes, not masks: as good on the benchmark and a quarter of
        the cost (bench/tracking.py)."""
        cfg = self.config
        inter = box_intersection(expected, boxes[dets]).diagonal()
        visible = inter / np.maximum(box_area(expected), 1e-9)
        inside = inter / np.maximum(box_area(boxes[dets]), 1e-9)
        partial = np.flatnonzero((visible < cfg.occluded_visible) & (inside >= 0.9))
        occluded = np.zeros(len(dets), bool)
        if len(partial) == 0:
            return occluded
        hiders = considered
        if rles is not None:   # a painted line's long box hides nothing: only solid shapes hide
            fill = (np.asarray(mask_utils.area([rles[i] for i in considered]), np.float64)
                    / np.maximum(box_area(boxes[considered]), 1.0))
            hiders = considered[fill >= SOLID_FILL]
        # (a detection's own box among the others changes nothing: only points outside it count)
        occluded[partial] = covered_fraction(expected[partial], boxes[dets[partial]], boxes[hiders]) >= 0.5
        return occluded

    @staticmethod
    def _assign(affinity: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Optimal one-to-one matching of rows and columns with affinity >= threshold: (rows, cols)."""
        if affinity.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        cost = np.where(affinity >= threshold, 1.0 - affinity, _NO_MATCH)
        rows, cols = linear_sum_assignment(cost)
        ok = cost[rows, cols] < _NO_MATCH
        return rows[ok].astype(np.int64), cols[ok].astype(np.int64)

    def update(self, boxes, scores, class_ids, rles: list[dict] | None, pts: float,
               image_size: tuple[int, int] | None = None, colours=None, palettes=None) -> TrackStep:
        """One frame's detections (N,) at time pts -> their track ids and the tracks that ended.
        image_size (H, W) of the frame (default: the masks' size, else unknown); colours (N, 3)
        each detection's mean mask colour, or None (no re-identification stage); palettes (N, B)
        each detection's mask palette, or None (no appearance gate)."""
        cfg = self.config
        if image_size is not None:
            self.image_size = (int(image_size[0]), int(image_size[1]))
        elif rles:
            self.image_size = (int(rles[0]["size"][0]), int(rles[0]["size"][1]))
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        class_ids = np.asarray(class_ids, np.int64).reshape(-1)
        n = len(scores)
        colours = None if colours is None else np.asarray(colours, np.float64).reshape(-1, 3)
        palettes = None if palettes is None else np.asarray(palettes, np.float64).reshape(-1, PALETTE_BINS)
        if (len(boxes) != n or len(class_ids) != n or (rles is not None and len(rles) != n)
                or (colours is not None and len(colours) != n) or (palettes is not None and len(palettes) != n)):
            raise ValueError(f"StreamTracker.update: {len(boxes)} boxes, {n} scores, {len(class_ids)} class ids"
                             + ("" if rles is None else f", {len(rles)} masks")
                             + ("" if colours is None else f", {len(colours)} colours")
                             + ("" if palettes is None else f", {len(palettes)} palettes") + ": expected as many of each")
        pts = float(pts)
        if self.last_pts is not None and pts < self.last_pts:
            raise ValueError(f"StreamTracker.update: pts {pts} before the previous frame's {self.last_pts}")
        previous_pts, self.last_pts = self.last_pts, pts

        # tracks unseen too long end; unconfirmed ones missed in the previous frame are dropped
        expired = (pts - self.seen_pts > cfg.max_age_s) | ((self.ids == 0) & (self.seen_pts != previous_pts))
        ended = np.sort(self.ids[expired & (self.ids > 0)])
        if expired.any():
            self._keep(~expired)

        predicted, predicted_cov = self._predicted(pts)
        matched_track = np.full(n, -1, np.int64)           # per detection: the track index it continues
        high = np.flatnonzero(scores >= cfg.high_score)
        low = np.flatnonzero((scores >= cfg.low_score) & (scores < cfg.high_score))
        confirmed = self.ids > 0
        recent = self.seen_pts == previous_pts
        # (detections, tracks, least affinity, weigh by score, where tracks are); `sort` has one stage
        stages = ([(high, np.ones(len(self), bool), cfg.match_threshold, False, "predicted")] if cfg.method == "sort" else
                  [(high, confirmed, cfg.match_threshold, cfg.fuse_score, "predicted"),     # confident: every confirmed track
                   (low, confirmed & recent, cfg.low_match_threshold, False, "predicted"),  # weak: those seen just before
                   (high, ~confirmed, cfg.match_threshold, cfg.fuse_score, "predicted")])   # confident left: unconfirmed
        if cfg.recover_lost and cfg.method != "sort":
            # confident detections left against the lost tracks where they were last seen (OC-SORT's
            # observation-centric recovery): a stopped or turned object is not where its velocity said
            stages.append((high, confirmed & ~recent, cfg.match_threshold, cfg.fuse_score, "last"))
        taken = np.zeros(len(self), bool)
        for dets, eligible, threshold, fuse, where in stages:
            dets = dets[matched_track[dets] < 0]
            candidates = np.flatnonzero(eligible & ~taken)
            if len(dets) == 0 or len(candidates) == 0:
                continue
            state, state_cov = (predicted, predicted_cov) if where == "predicted" else (self._last_seen(), self.cov)
            affinity = self._affinity(candidates, dets, state, state_cov, boxes, class_ids, rles, palettes)
            rows, cols = self._assign(affinity * scores[dets][None, :] if fuse else affinity, threshold)
            matched_track[dets[cols]] = candidates[rows]
            taken[candidates[rows]] = True

        considered = np.flatnonzero(scores >= cfg.low_score)
        keep_masks = rles is not None and cfg.method == "bytetrack-mask"   # only its affinity reads them
        if cfg.occlusion and cfg.method != "sort":
            # what is left of an object behind another (or cut by the frame edge) lies inside the
            # box its track expects: detections left over against the confirmed tracks left over
            dets = high[matched_track[high] < 0]
            candidates = np.flatnonzero(confirmed & ~taken)
            if len(dets) and len(candidates):
                affinity = box_containment(self._expected_boxes(predicted[candidates]), boxes[dets])
                affinity *= self._alike(candidates, dets, class_ids, palettes)
                rows, cols = self._assign(affinity, cfg.partial_containment)
                matched_track[dets[cols]] = candidates[rows]
                taken[candidates[rows]] = True

        if cfg.reidentify and colours is not None and cfg.method != "sort":
            # by where and what: confident detections left over against the confirmed tracks left over
            dets = high[matched_track[high] < 0]
            candidates = np.flatnonzero(confirmed & ~taken)
            if len(dets) and len(candidates):
                affinity = self._reid_affinity(candidates, dets, predicted, boxes, class_ids, colours, palettes)
                rows, cols = self._assign(affinity, 1e-9)
                matched_track[dets[cols]] = candidates[rows]
                taken[candidates[rows]] = True

        # matched tracks take their detection; one whose detection shows only part of the expected
        # box, the rest covered by other detections, is occluded: it coasts on its prediction
        det_index = np.flatnonzero(matched_track >= 0)
        track_index = matched_track[det_index]
        if len(det_index):
            occluded = np.zeros(len(det_index), bool)
            if cfg.occlusion and cfg.method != "sort":
                occluded = self._occluded(self._expected_boxes(predicted[track_index]), det_index, considered,
                                          boxes, rles)
            measured = ~occluded
            mt, seen_boxes = track_index[measured], boxes[det_index[measured]]
            weights, self.full_areas[mt] = colour_weights(
                box_area(seen_boxes), self.full_areas[mt], pts - self.updated_pts[mt],
                cfg.colour_smoothing, cfg.partial_view_power, cfg.full_view_half_life_s)
            weights = weights[:, None]
            self._measure(mt, predicted[mt], predicted_cov[mt], seen_boxes)
            consecutive = self.seen_pts[track_index] == previous_pts
            self.hits[track_index] = np.where(consecutive, np.minimum(self.hits[track_index] + 1, cfg.min_hits), 1)
            self.updated_pts[mt] = pts
            self.seen_pts[track_index] = pts
            self.mask_centres[mt] = self.mean[mt, :2]
            for t, d in zip(mt, det_index[measured]):
                self.masks[t] = rles[d] if keep_masks else None
            if colours is not None:   # a running mean; a track's first colour is taken as it is
                seen = colours[det_index[measured]]
                old = self.colours[mt]
                self.colours[mt] = np.where(np.isnan(old), seen, old + weights * (seen - old))
            if palettes is not None:
                seen, old = palettes[det_index[measured]], self.palettes[mt]
                self.palettes[mt] = np.where(np.isnan(old), seen, old + weights * (seen - old))
        # tracks not matched coast: their state stays at their last update, predicted anew each frame

        # confident detections left over start tracks
        fresh = [d for d in high if matched_track[d] < 0 and scores[d] >= cfg.new_track_score]
        first = len(self)
        if fresh:
            self._new_tracks(boxes[fresh], class_ids[fresh], [rles[d] if keep_masks else None for d in fresh],
                             colours[fresh] if colours is not None else np.full((len(fresh), 3), np.nan),
                             palettes[fresh] if palettes is not None else np.full((len(fresh), PALETTE_BINS), np.nan),
                             pts)
            matched_track[fresh] = np.arange(first, len(self))

        # tracks with enough consecutive detections get their id, in detection order; at a stream's
        # first frame there is nothing to confirm against, so its tracks get theirs at once
        for d in np.flatnonzero(matched_track >= 0):
            t = matched_track[d]
            if self.ids[t] == 0 and (self.hits[t] >= cfg.min_hits or previous_pts is None):
                self.ids[t] = self.next_id
                self.next_id += 1
        track_ids = np.where(matched_track >= 0, self.ids[np.maximum(matched_track, 0)] if len(self) else 0, 0)
        return TrackStep(track_ids.astype(np.int64), ended.astype(np.int64))

    def finish(self) -> np.ndarray:
        """End every track (the stream ended): their ids (E,) int64, ascending."""
        ended = np.sort(self.ids[self.ids > 0]).astype(np.int64)
        self._keep(np.zeros(len(self), bool))
        return ended


class TrackingStage:
    """The pipeline's tracking stage for one stream: the publisher hands it each frame record in
    `seq` order, exactly once, just before sending it (so the ids depend only on the detections,
    not on which worker computed them or whether a batch ran twice).

        stage = TrackingStage(config.tracking, publish_score=0.5)
        record = stage.apply(record)      # instances with track_id, tracks_ended set
        ended = stage.alive()             # at the end of the stream: the tracks still alive
        saved = stage.snapshot()          # its state now; TrackingStage(..., tracker=saved) goes on from it

    The workers keep detections down to `low_score` (at most `publish_score`) for it; a frame's
    instances are published if they score above `publish_score` (as without tracking; track_id 0
    when in no confirmed track: a new object's first frame, or too weak to start a track) or if
    they continue a confirmed track (a weak detection of a partly hidden object: ByteTrack's
    second stage).
    Should pts run backwards (a live source reopened with its clock restarted), every track
    ends at that frame and tracking starts over; ids keep counting up, so they stay unique.
    """

    def __init__(self, config: TrackingConfig, publish_score: float, tracker: StreamTracker | None = None):
        """`tracker`: a `snapshot()` to go on from (a restarted publisher's), else a fresh one. A
        `low_score` above `publish_score` comes down to it: every instance published is tracked."""
        self.publish_score = float(publish_score)
        self.config = replace(config, low_score=min(config.low_score, self.publish_score))
        self.tracker = tracker.snapshot() if tracker is not None else StreamTracker(self.config)

    def apply(self, record):
        """A `pipeline.protocol.FrameRecord` -> the record as published: instances kept (see the
        class docstring) with their `track_id`, `tracks_ended`, and the stage's milliseconds as
        `timing_ms["track"]`."""
        started = time.perf_counter()
        restarted = np.zeros(0, np.int64)
        if self.tracker.last_pts is not None and record.pts < self.tracker.last_pts:
            restarted = self.tracker.finish()
            self.tracker = StreamTracker(self.config, self.tracker.next_id)
        instances = record.instances
        colours = (np.array([inst.colour for inst in instances], np.float64).reshape(-1, 3)
                   if all(inst.colour is not None for inst in instances) else None)
        palettes = (np.array([inst.palette for inst in instances], np.float64).reshape(-1, PALETTE_BINS)
                    if all(inst.palette is not None for inst in instances) else None)
        step = self.tracker.update(np.array([inst.box for inst in instances], np.float64).reshape(-1, 4),
                                   np.array([inst.score for inst in instances], np.float64),
                                   np.array([inst.class_id for inst in instances], np.int64),
                                   [inst.rle for inst in instances], record.pts, (record.height, record.width),
                                   colours, palettes)
        kept = tuple(replace(inst, track_id=int(track_id)) for inst, track_id in zip(instances, step.track_ids)
                     if track_id > 0 or inst.score > self.publish_score)
        ended = tuple(int(i) for i in np.concatenate([restarted, step.ended]))
        return replace(record, instances=kept, tracks_ended=ended,
                       timing_ms={**record.timing_ms, "track": (time.perf_counter() - started) * 1e3})

    def alive(self) -> tuple[int, ...]:
        """The ids of the confirmed tracks alive now, ascending: at a stream's end, the tracks that
        end with it (the state is left as it is, so that an end sent again says the same)."""
        return tuple(int(i) for i in np.sort(self.tracker.ids[self.tracker.ids > 0]))

    def snapshot(self) -> StreamTracker:
        """A copy of the tracker's state, unaffected by the frames that follow."""
        return self.tracker.snapshot()


def tracking_config(data: dict | None, path: str = "tracking") -> TrackingConfig:
    """A validated TrackingConfig from a mapping (a YAML `tracking:` section); ConfigError on a mistake."""
    config = from_dict(TrackingConfig, data or {}, path)
    config.validate(path)
    return config

"""Generated street scenes: a procedurally drawn road video whose instance masks are exact.

A camera drives along a straight road with cars in its lanes, people on the sidewalks and
crossing, and lane markings painted on the asphalt. Classes (ids as in `CLASS_NAMES`):
1 car, 2 person, 3 lane (one instance per dash of a dashed line, one per solid line).

    scene = StreetScene(seed=7)                  # 640 x 360 by default
    rgb, instances = scene.frame(t)              # any frame index t >= 0, in any order
    instances[0].mask, instances[0].box          # (H, W) bool, (x1, y1, x2, y2) floats

Geometry. World coordinates are metres: x to the right of the camera, h up from the ground,
z ahead along the road. The pinhole camera at height `mount_height` projects (x, h, z) to
column W/2 + f x / z and row horizon + f (mount_height - h) / z, so far things are small and
near the horizon, near things big and low in the frame.

Time. Every moving thing is a pure function of the frame index: cars and people live in
"slots" whose life repeats in cycles of a fixed length per slot, and each cycle's parameters
come from a generator seeded by (seed, class, slot, cycle). A frame therefore needs no history,
the same seed gives the same video, and a thing keeps one track id for its whole life.

Masks. Drawing is a painter's algorithm: background, then the markings on the ground, then
cars and people from far to near. Every polygon is filled into the image and, with the
instance's number, into an owner map; an instance's mask is the owner map's pixels that still
carry its number, i.e. exactly what it shows. Instances showing fewer than
`MIN_VISIBLE_PIXELS` pixels are left out of the annotations. Blur, lighting drift and sensor
noise are applied to the finished image; the masks stay the drawn geometry.

Command line, a COCO data set for training and evaluation:

    maskstream scenes write DIR --images N --seed S [--width W --height H]
                            [--frames-per-sequence K] [--frame-step D] [--mots]

(`--mots`: the sequences' ground truth also in the MOTS and MOTChallenge text formats, DIR/tracks/,
see models/data/mots.py.)
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from ..errors import DataError, command

CLASS_NAMES = ["__background__", "car", "person", "lane"]
CAR, PERSON, LANE = 1, 2, 3
MIN_VISIBLE_PIXELS = 16

MOUNT_HEIGHT = 1.4          # camera height above the road, metres
NEAR_CLIP = 0.8             # nothing is drawn closer than this (metres ahead)
SOLID_LINE_LENGTH = 160.0   # a solid line is drawn this far ahead
DASH_VISIBLE_UNTIL = 90.0   # dashes beyond this are below a pixel
TEXEL = 0.04                # metres per ground texture cell
NOISE_BANK = 4              # sensor noise fields per scene, cycled over frames

CAR_COLOURS = [(235, 235, 235), (30, 30, 32), (160, 163, 168), (95, 98, 104), (170, 20, 25),
               (25, 55, 140), (20, 35, 70), (30, 95, 55), (225, 190, 30), (220, 110, 25),
               (110, 70, 45), (120, 170, 210)]
GLASS = (40, 50, 66)
SKIN_TONES = [(255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36),
              (92, 56, 30)]


@dataclass
class DrawnInstance:
    """One visible thing in a frame."""
    class_id: int
    label: str
    mask: np.ndarray                              # (H, W) bool, the pixels it shows
    box: tuple[float, float, float, float]        # tight box of the mask: x1, y1, last column + 1, last row + 1
    track_id: int                                 # the same for the same thing in every frame of a scene
    visibility: float | None = None               # shown pixels / pixels it covers in the frame (None: not computed)


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    focal: float            # pixels per metre at one metre
    horizon_y: float        # row of the vanishing point
    mount_height: float = MOUNT_HEIGHT

    def project(self, x, h, z) -> np.ndarray:
        """World points (broadcastable arrays x, h, z; z > 0) -> (..., 2) pixel (u, v)."""
        x, h, z = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(h, np.float64),
                                      np.asarray(z, np.float64))
        return np.stack([self.width / 2 + self.focal * x / z,
                         self.horizon_y + self.focal * (self.mount_height - h) / z], axis=-1)


@dataclass(frozen=True)
class Line:
    """A painted line along the road at lateral position x (metres)."""
    x: float
    colour: tuple[int, int, int]
    dashed: bool
    dash_offset: float      # where dash 0 starts along the road (metres)


@dataclass(frozen=True)
class Road:
    lane_width: float
    left_edge: float        # x of the left and right road edges
    right_edge: float
    same_lanes: tuple[float, ...]       # centres of the lanes going the camera's way
    oncoming_lanes: tuple[float, ...]
    lines: tuple[Line, ...]
    dash_length: float
    dash_gap: float
    marking_width: float


@dataclass(frozen=True)
class Car:
    track_id: int
    x: float                # lateral centre
    z: float                # distance of the face turned to the camera
    oncoming: bool          # shows its front (headlights) rather than its rear
    width: float
    length: float
    clearance: float        # body bottom above the ground
    body_top: float
    cabin_top: float
    cabin_start: float      # cabin extent along the car, from the face turned to the camera
    cabin_end: float
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class Person:
    track_id: int
    x: float
    z: float
    height: float
    stride_phase: float     # radians; legs and arms swing with it
    side_view: bool         # crossing the road (seen from the side) or walking along it
    shirt: tuple[int, int, int]
    trousers: tuple[int, int, int]
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]


class Canvas:
    """The frame being drawn and its owner map (0: background, k: the k-th instance begun)."""

    def __init__(self, rgb: np.ndarray):
        self.rgb = rgb
        self.owner = np.zeros(rgb.shape[:2], np.int32)
        self.extents: list[list[int]] = []      # per instance: x0, y0, x1, y1 of what was drawn
        self.meta: list[tuple[int, int]] = []   # per instance: class id, track id
        self.polygons: list[list[np.ndarray]] = []   # per instance: its polygons, 4 fractional bits

    def begin(self, class_id: int, track_id: int) -> int:
        self.extents.append([self.rgb.shape[1], self.rgb.shape[0], 0, 0])
        self.meta.append((class_id, track_id))
        self.polygons.append([])
        return len(self.meta)

    def fill(self, polygon: np.ndarray, colour, owner: int) -> None:
        """Fill one polygon (k, 2) pixel coordinates with `colour` and mark it as `owner`'s."""
        points = [np.round(polygon * 16).astype(np.int32)]   # 4 fractional bits: smooth small shapes
        cv2.fillPoly(self.rgb, points, tuple(int(c) for c in colour), cv2.LINE_8, shift=4)
        cv2.fillPoly(self.owner, points, owner, cv2.LINE_8, shift=4)
        self.polygons[owner - 1].append(points[0])
        extent = self.extents[owner - 1]
        height, width = self.owner.shape
        extent[0] = min(extent[0], max(int(np.floor(polygon[:, 0].min())) - 1, 0))
        extent[1] = min(extent[1], max(int(np.floor(polygon[:, 1].min())) - 1, 0))
        extent[2] = max(extent[2], min(int(np.ceil(polygon[:, 0].max())) + 2, width))
        extent[3] = max(extent[3], min(int(np.ceil(polygon[:, 1].max())) + 2, height))

    def instances(self, visibility: bool = False) -> list[DrawnInstance]:
        """The instances that show at least MIN_VISIBLE_PIXELS pixels, in drawing order; with
        `visibility`, each with the fraction of the pixels its polygons cover in the frame that it
        shows (1: nothing drawn later hides it; the frame's edges do not count)."""
        height, width = self.owner.shape
        found = []
        for owner, ((class_id, track_id), (x0, y0, x1, y1)) in enumerate(zip(self.meta, self.extents), 1):
            if x1 <= x0 or y1 <= y0:
                continue
            region = self.owner[y0:y1, x0:x1] == owner
            if np.count_nonzero(region) < MIN_VISIBLE_PIXELS:
                continue
            mask = np.zeros((height, width), bool)
            mask[y0:y1, x0:x1] = region
            cols = np.flatnonzero(region.any(axis=0))
            rows = np.flatnonzero(region.any(axis=1))
            box = (float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1))
            shown = None
            if visibility:
                drawn = np.zeros((y1 - y0, x1 - x0), np.uint8)
                for points in self.polygons[owner - 1]:     # one call each: one call fills overlaps even-odd
                    cv2.fillPoly(drawn, [points - np.array([x0, y0], np.int32) * 16], 1, cv2.LINE_8, shift=4)
                shown = float(np.count_nonzero(region)) / max(int(np.count_nonzero(drawn)), 1)
            found.append(DrawnInstance(class_id, CLASS_NAMES[class_id], mask, box, track_id, shown))
        return found


def track_id(class_id: int, slot: int, serial: int) -> int:
    """A track id unique within a scene for (class, slot, serial), all >= 0, slot < 64."""
    return (serial * 64 + slot) * 4 + class_id


def ellipse(cu: float, cv: float, ru: float, rv: float, points: int = 16) -> np.ndarray:
    """An ellipse in pixels as a (points, 2) polygon."""
    angle = np.linspace(0, 2 * np.pi, points, endpoint=False)
    return np.stack([cu + ru * np.cos(angle), cv + rv * np.sin(angle)], axis=-1)


def shade(colour, factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, c * factor)) for c in colour)


def jitter(rng: np.random.Generator, colour, amount: int = 18) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def periodic_noise(rng: np.random.Generator, size: int, scales: tuple[float, ...]) -> np.ndarray:
    """A tileable noise texture (size, size) float32 with zero mean and unit std: white noise
    low-passed at each scale (in cells) through the FFT, so it wraps without a seam."""
    freq = np.fft.fftfreq(size)
    radius2 = freq[:, None] ** 2 + np.fft.rfftfreq(size)[None, :] ** 2
    total = np.zeros((size, size))
    for scale in scales:
        spectrum = np.fft.rfft2(rng.standard_normal((size, size))) * np.exp(-radius2 * (np.pi * scale) ** 2)
        layer = np.fft.irfft2(spectrum, s=(size, size))
        total += layer / layer.std()
    return ((total - total.mean()) / total.std()).astype(np.float32)


def along_path(path: list[float], speed: float, elapsed: float, time_limit: float) -> float | None:
    """The distance (metres) `elapsed` frames along a path through the distances `path`, moving
    at `speed` in log-distance per frame, or None before the start or after the end.

    Constant speed in log-distance is a constant relative change of size on screen per frame,
    so things grow smoothly as they come near instead of rushing through the near range. A
    path longer than `time_limit` frames is travelled faster to fit.
    """
    logs = np.log(path)
    legs = np.abs(np.diff(logs))
    duration = min(legs.sum() / speed, time_limit)
    if not 0 <= elapsed < duration:
        return None
    times = np.concatenate([[0.0], np.cumsum(legs)]) * duration / legs.sum()
    return float(np.exp(np.interp(elapsed, times, logs)))


def make_road(rng: np.random.Generator) -> Road:
    """A random road layout around the camera, which drives in the middle of one of its lanes."""
    lane_width = rng.uniform(3.0, 3.8)
    same, oncoming = int(rng.integers(1, 4)), int(rng.integers(0, 3))
    camera_lane = int(rng.integers(0, same))
    left_edge = -(oncoming + camera_lane + 0.5) * lane_width
    white = jitter(rng, (235, 235, 228), 10)
    yellow = jitter(rng, (235, 195, 40), 12)
    dash_length, dash_gap = rng.uniform(2.5, 4.5), rng.uniform(5.0, 9.0)
    lines = []
    for i in range(same + oncoming + 1):
        edge = i in (0, same + oncoming)
        centre = i == oncoming and not edge
        dashed = not edge and (not centre or rng.random() < 0.5)
        lines.append(Line(left_edge + i * lane_width, yellow if centre else white, dashed,
                          rng.uniform(0, dash_length + dash_gap)))
    centres = [left_edge + (i + 0.5) * lane_width for i in range(same + oncoming)]
    return Road(lane_width, left_edge, left_edge + (same + oncoming) * lane_width, tuple(centres[oncoming:]),
                tuple(centres[:oncoming]), tuple(lines), dash_length, dash_gap, rng.uniform(0.14, 0.22))


class StreetScene:
    """A deterministic street video: `frame(t)` -> (rgb uint8 (H, W, 3), list of DrawnInstance)."""

    def __init__(self, seed: int, width: int = 640, height: int = 360):
        if width < 32 or height < 32:
            raise ValueError(f"StreetScene: frame {width}x{height} is too small (at least 32x32)")
        self.seed, self.width, self.height = int(seed), int(width), int(height)
        rng = np.random.default_rng([self.seed, 0])
        self.camera = Camera(width, height, focal=rng.uniform(0.8, 1.0) * width,
                             horizon_y=rng.uniform(0.36, 0.46) * height)
        self.road = make_road(rng)
        # metres per frame; a parked camera (0) now and then, like a traffic camera
        self.camera_speed = 0.0 if rng.random() < 0.15 else rng.uniform(0.15, 0.55)
        self.car_slots = self._slots(rng, int(rng.integers(3, 8)), (160, 260))
        self.person_slots = self._slots(rng, int(rng.integers(3, 7)), (160, 260))
        self.lighting = rng.uniform(size=8)
        self.blur_strength = rng.uniform(0.0, 1.4)
        self.sky = self._sky_and_skyline(rng)
        self._ground_setup(rng)
        noise_sigma = rng.uniform(1.5, 7.0)
        self.noise = (rng.standard_normal((NOISE_BANK, height, width, 3), np.float32) * noise_sigma).clip(-60, 60).astype(np.int16)

    @staticmethod
    def _slots(rng: np.random.Generator, count: int, period_range: tuple[int, int]) -> list[tuple[int, int]]:
        """(period, phase) in frames for each slot."""
        return [(int(p), int(rng.integers(0, p))) for p in rng.integers(*period_range, size=count)]

    def _slot_cycles(self, class_id: int, t: int):
        """For each slot of cars or people at frame t: (track id, the current cycle's generator,
        frames since the cycle began, cycle length)."""
        for slot, (period, phase) in enumerate(self.car_slots if class_id == CAR else self.person_slots):
            cycle, local = divmod(t + phase, period)
            yield (track_id(class_id, slot, cycle), np.random.default_rng([self.seed, class_id, slot, cycle]),
                   local, period)

    # -- background --------------------------------------------------------------------------

    def _sky_and_skyline(self, rng: np.random.Generator) -> np.ndarray:
        """The static part above the horizon: sky gradient, clouds, buildings and trees (H, W, 3) uint8."""
        h, w = self.height, self.width
        horizon = int(math.ceil(self.camera.horizon_y))
        top = np.array(jitter(rng, (70, 120, 200), 30), np.float32)
        low = np.array(jitter(rng, (190, 205, 225), 20), np.float32)
        ramp = np.clip(np.arange(h, dtype=np.float32) / max(horizon, 1), 0, 1)[:, None, None]
        sky = np.broadcast_to(top + (low - top) * ramp, (h, w, 3)).copy()
        clouds = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(0, 6))):
            centre = (int(rng.uniform(0, w)), int(rng.uniform(0, 0.7) * horizon))
            axes = (int(rng.uniform(0.05, 0.2) * w), int(rng.uniform(0.02, 0.06) * h) + 1)
            cv2.ellipse(clouds, centre, axes, 0, 0, 360, float(rng.uniform(0.4, 0.9)), -1)
        clouds = cv2.GaussianBlur(clouds, (0, 0), 0.02 * w + 1)[..., None]
        sky = sky + (250 - sky) * clouds
        unit = w / 640
        x = -rng.uniform(0, 40) * unit
        while x < w:
            bw = rng.uniform(25, 110) * unit
            top_y = horizon - rng.uniform(0.08, 0.7) * horizon
            colour = np.array(jitter(rng, (120, 115, 110), 45), np.float32)
            x0, x1 = int(x), int(x + bw)
            sky[int(top_y):horizon + 1, max(x0, 0):x1] = colour
            window = colour * rng.uniform(0.5, 1.4)
            step = max(int(rng.uniform(6, 12) * unit), 3)
            for wy in range(int(top_y) + step // 2, horizon - step // 2, step):
                for wx in range(x0 + step // 2, x1 - step // 2, step):
                    sky[wy:wy + max(step // 2, 1), max(wx, 0):max(wx + step // 2, 0)] = window
            x += bw + rng.uniform(-5, 30) * unit
        for _ in range(int(rng.integers(0, 10))):
            centre = (int(rng.uniform(0, w)), int(horizon - rng.uniform(0.05, 0.2) * horizon))
            radius = max(int(rng.uniform(0.01, 0.04) * w), 1)
            cv2.circle(sky, centre, radius, tuple(float(c) for c in jitter(rng, (50, 95, 45), 20)), -1)
        return np.clip(sky, 0, 255).astype(np.uint8)

    def _ground_setup(self, rng: np.random.Generator) -> None:
        """Per ground pixel: its colour, texture strength and texture coordinates (static; the
        texture scrolls along z as the camera moves)."""
        cam, road = self.camera, self.road
        self.ground_top = min(int(math.floor(cam.horizon_y)) + 1, self.height - 1)
        v = np.arange(self.ground_top, self.height, dtype=np.float64) + 0.5
        u = np.arange(self.width, dtype=np.float64) + 0.5
        z = (cam.focal * cam.mount_height / np.maximum(v - cam.horizon_y, 0.25))[:, None]
        x = (u[None, :] - self.width / 2) * z / cam.focal
        asphalt = np.array(jitter(rng, (85, 85, 88), 15), np.float32)
        curb = np.array(jitter(rng, (165, 163, 158), 12), np.float32)
        sidewalk = np.array(jitter(rng, (140, 135, 128), 15), np.float32)
        grass = np.array(jitter(rng, (75, 120, 55), 20), np.float32)
        haze = np.array(jitter(rng, (170, 175, 180), 10), np.float32)
        offside = np.maximum(road.left_edge - x, x - road.right_edge)   # metres beyond the road
        kind = np.select([offside <= 0, offside <= 0.25, offside <= 3.0], [0, 1, 2], 3)
        colour = np.stack([asphalt, curb, sidewalk, grass])[kind]
        distance = np.clip(z / 220.0, 0, 1)[..., None]
        self.ground_colour = (colour + (haze - colour) * distance).astype(np.float32)
        strength = np.array([0.18, 0.08, 0.12, 0.3], np.float32)[kind]
        self.ground_strength = (strength * np.clip(1 - z / 120.0, 0.05, 1)).astype(np.float32)[..., None]
        self.texture = periodic_noise(rng, 512, (1.0, 6.0, 25.0))
        self.texture_u = np.mod(x / TEXEL, 512).astype(np.float32)
        self.texture_z = (np.broadcast_to(z, x.shape) / TEXEL).astype(np.float32)

    def _ground(self, travelled: float) -> np.ndarray:
        """The ground rows (from ground_top down) for a camera that has travelled this far."""
        along = np.mod(self.texture_z + np.float32(travelled / TEXEL), 512)
        texture = cv2.remap(self.texture, self.texture_u, along, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        ground = self.ground_colour * (1 + self.ground_strength * texture[..., None])
        return np.clip(ground, 0, 255).astype(np.uint8)

    # -- things ----------------------------------------------------------------------------

    def markings(self, t: int) -> list[tuple[int, np.ndarray, tuple[int, int, int]]]:
        """The lane markings at frame t as (track id, world quad (4, 3) x h z, colour)."""
        road, travelled = self.road, self.camera_speed * t
        half = road.marking_width / 2
        period = road.dash_length + road.dash_gap
        found = []
        for i, line in enumerate(road.lines):
            if not line.dashed:
                spans = [(track_id(LANE, i, 0), NEAR_CLIP, SOLID_LINE_LENGTH)]
            else:
                first = math.floor((travelled + NEAR_CLIP - line.dash_offset - road.dash_length) / period)
                last = math.floor((travelled + DASH_VISIBLE_UNTIL - line.dash_offset) / period)
                spans = []
                for k in range(first, last + 1):
                    near = line.dash_offset + k * period - travelled
                    # serial k + 3 > 0 (solid lines have 0): k >= -2 as travelled >= 0, dash_offset < period
                    spans.append((track_id(LANE, i, k + 3), max(near, NEAR_CLIP), near + road.dash_length))
            for tid, near, far in spans:
                if far > near:
                    quad = np.array([[line.x - half, 0, near], [line.x + half, 0, near],
                                     [line.x + half, 0, far], [line.x - half, 0, far]])
                    found.append((tid, quad, line.colour))
        return found

    def cars(self, t: int) -> list[Car]:
        """The cars on the road at frame t."""
        road, found = self.road, []
        for tid, rng, local, period in self._slot_cycles(CAR, t):
            start = int(rng.integers(0, period // 4))
            oncoming = bool(road.oncoming_lanes) and rng.random() < 0.4
            lane = rng.choice(road.oncoming_lanes if oncoming else road.same_lanes)
            if oncoming:      # comes from the horizon and passes the camera on the left
                path = [110.0, 1.5]
            elif abs(lane) < road.lane_width / 2:   # the camera's own lane: caught up with, then pulls away
                path = [110.0, rng.uniform(7, 20), 110.0]
            else:             # overtaken (comes closer) or overtaking (drives away)
                path = [110.0, 1.5] if rng.random() < 0.5 else [1.5, 110.0]
            z = along_path(path, rng.uniform(0.015, 0.045), local - start, period - start)
            if z is None:
                continue
            length = rng.uniform(3.8, 5.0)
            body_top = rng.uniform(0.85, 1.15)
            cabin_start = rng.uniform(0.9, 1.4)
            found.append(Car(tid, float(lane + rng.uniform(-0.3, 0.3)), z, oncoming,
                             width=rng.uniform(1.65, 2.0), length=length, clearance=rng.uniform(0.2, 0.35),
                             body_top=body_top, cabin_top=body_top + rng.uniform(0.4, 0.65),
                             cabin_start=cabin_start, cabin_end=length - rng.uniform(0.8, 1.4),
                             colour=jitter(rng, CAR_COLOURS[int(rng.integers(len(CAR_COLOURS)))])))
        return found

    def people(self, t: int) -> list[Person]:
        """The people at frame t: on the sidewalks, or crossing the road."""
        road, found = self.road, []
        for tid, rng, local, period in self._slot_cycles(PERSON, t):
            start = int(rng.integers(0, period // 5))
            crossing = rng.random() < 0.3
            side = -1 if rng.random() < 0.5 else 1
            walk = rng.uniform(0.03, 0.07)             # metres per frame, for crossing and the stride
            edge = road.right_edge if side > 0 else road.left_edge
            if crossing:
                x0, vx = edge + side * 1.0, -side * walk
            else:
                x0, vx = edge + side * rng.uniform(0.6, 2.6), 0.0
            path = [rng.uniform(20, 90), 2.5] if rng.random() < 0.7 else [rng.uniform(2.5, 8), rng.uniform(20, 90)]
            elapsed = local - start
            z = along_path(path, rng.uniform(0.01, 0.03), elapsed, period - start)
            if z is None:
                continue
            x = x0 + vx * elapsed
            found.append(Person(tid, float(x), z,
                                height=rng.uniform(1.5, 1.9) if rng.random() < 0.85 else rng.uniform(1.0, 1.4),
                                stride_phase=float(2 * np.pi * walk * elapsed / 1.4), side_view=crossing,
                                shirt=tuple(int(c) for c in rng.integers(20, 240, 3)),
                                trousers=jitter(rng, [(40, 45, 60), (30, 30, 30), (70, 80, 120), (110, 100, 85)]
                                                [int(rng.integers(4))]),
                                skin=jitter(rng, SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], 8),
                                hair=jitter(rng, (45, 35, 25), 25)))
        return found

    def draw_car(self, canvas: Canvas, car: Car) -> None:
        """A car as a box body with a glass cabin on top and wheels, seen in perspective from
        its rear (or front when oncoming); the side facing the camera shows when it is off-centre."""
        cam, owner = self.camera, canvas.begin(CAR, car.track_id)
        half = car.width / 2
        z0, z1 = car.z, car.z + car.length
        side_x = car.x - half if car.x - half > 0 else car.x + half if car.x + half < 0 else None
        wheel_r = min(0.33, car.clearance + 0.15)
        for dz in (0.75, car.length - 0.75):               # wheels, seen under the body and on its side
            for wx in (car.x - half + 0.2, car.x + half - 0.2):
                canvas.fill(cam.project([wx - 0.2, wx + 0.2, wx + 0.2, wx - 0.2], [0, 0, 2 * wheel_r, 2 * wheel_r],
                                        z0 + dz), (20, 20, 20), owner)
            if side_x is not None:
                angle = np.linspace(0, 2 * np.pi, 12, endpoint=False)
                canvas.fill(cam.project(side_x, wheel_r + wheel_r * np.sin(angle), z0 + dz + wheel_r * np.cos(angle)),
                            (25, 25, 25), owner)
        inset = 0.12
        cabin_near, cabin_far = z0 + car.cabin_start, z0 + car.cabin_end
        lean = 0.35 * (car.cabin_top - car.body_top)
        if car.body_top < cam.mount_height:                  # hood and trunk seen from above
            canvas.fill(cam.project([car.x - half, car.x + half, car.x + half, car.x - half], car.body_top,
                                    [z0, z0, z1, z1]), shade(car.colour, 1.1), owner)
        if side_x is not None:
            cabin_side = side_x + (inset if side_x > car.x else -inset)
            canvas.fill(cam.project(cabin_side, [car.body_top, car.cabin_top, car.cabin_top, car.body_top],
                                    [cabin_near, cabin_near + lean, cabin_far - lean, cabin_far]), GLASS, owner)
        if car.cabin_top < cam.mount_height:
            canvas.fill(cam.project([car.x - half + inset, car.x + half - inset] * 2,
                                    car.cabin_top, [cabin_near + lean] * 2 + [cabin_far - lean] * 2)[[0, 1, 3, 2]],
                        car.colour, owner)
        for frame_width, colour in ((0.0, car.colour), (0.09, shade(GLASS, 1.3))):   # pillars, then the window
            left, right = car.x - half + inset + frame_width, car.x + half - inset - frame_width
            bottom, top = car.body_top + frame_width / 2, car.cabin_top - frame_width
            canvas.fill(cam.project([left, right, right, left], [bottom, bottom, top, top],
                                    cabin_near + lean * (np.array([bottom, bottom, top, top]) - car.body_top)
                                    / (car.cabin_top - car.body_top)), colour, owner)
        if side_x is not None:
            canvas.fill(cam.project(side_x, [car.clearance, car.body_top, car.body_top, car.clearance],
                                    [z0, z0, z1, z1]), shade(car.colour, 0.75), owner)
        face = cam.project([car.x - half, car.x + half, car.x + half, car.x - half],
                           [car.clearance, car.clearance, car.body_top, car.body_top], z0)
        canvas.fill(face, car.colour, owner)
        lamp = (245, 240, 200) if car.oncoming else (200, 20, 20)
        lamp_top = car.body_top - 0.12
        for lx in (car.x - half + 0.08, car.x + half - 0.33):
            canvas.fill(cam.project([lx, lx + 0.25, lx + 0.25, lx], [lamp_top - 0.15] * 2 + [lamp_top] * 2, z0),
                        lamp, owner)
        canvas.fill(cam.project([car.x - half, car.x + half, car.x + half, car.x - half],
                                [car.clearance, car.clearance, car.clearance + 0.12, car.clearance + 0.12], z0),
                    (30, 30, 30), owner)                       # bumper
        canvas.fill(cam.project([car.x - 0.26, car.x + 0.26, car.x + 0.26, car.x - 0.26],
                                [car.clearance + 0.15] * 2 + [car.clearance + 0.27] * 2, z0), (230, 230, 220), owner)

    def draw_person(self, canvas: Canvas, person: Person) -> None:
        """A person as legs, torso, arms and head, upright at their foot point; a walker's legs
        and arms swing with the stride phase."""
        cam, owner = self.camera, canvas.begin(PERSON, person.track_id)
        foot_u, foot_v = cam.project(person.x, 0.0, person.z)
        scale = cam.focal / person.z * person.height              # pixels per body height

        def part(points) -> np.ndarray:
            """Body coordinates (lateral, up) in body heights -> pixels."""
            points = np.asarray(points, np.float64)
            return np.stack([foot_u + scale * points[:, 0], foot_v - scale * points[:, 1]], axis=-1)

        swing = np.sin(person.stride_phase)
        reach = 0.14 * swing if person.side_view else 0.0
        lift = 0.0 if person.side_view else 0.03 * swing
        hip, shoulder = 0.48, 0.81
        for side, sign in ((-1, 1), (1, -1)):
            foot_x = side * 0.05 + sign * reach
            foot_y = max(sign * lift, 0.0)
            canvas.fill(part([[side * 0.05 - 0.045, hip], [side * 0.05 + 0.045, hip],
                              [foot_x + 0.04, foot_y], [foot_x - 0.04, foot_y]]), person.trousers, owner)
        canvas.fill(part([[-0.11, hip], [0.11, hip], [0.12, shoulder], [-0.12, shoulder]]), person.shirt, owner)
        for side, sign in ((-1, -1), (1, 1)):
            hand_x = side * 0.14 + sign * 0.6 * reach
            canvas.fill(part([[side * 0.12 - 0.03, shoulder], [side * 0.12 + 0.03, shoulder],
                              [hand_x + 0.025, hip + 0.02], [hand_x - 0.025, hip + 0.02]]), shade(person.shirt, 0.85), owner)
            hand = part([[hand_x, hip + 0.01]])[0]
            canvas.fill(ellipse(hand[0], hand[1], 0.025 * scale, 0.025 * scale, 8), person.skin, owner)
        canvas.fill(part([[-0.025, shoulder], [0.025, shoulder], [0.025, 0.86], [-0.025, 0.86]]), person.skin, owner)
        head = part([[0.0, 0.92]])[0]
        canvas.fill(ellipse(head[0], head[1], 0.06 * scale, 0.075 * scale), person.skin, owner)
        canvas.fill(ellipse(head[0], head[1] - 0.03 * scale, 0.062 * scale, 0.05 * scale), person.hair, owner)

    # -- the frame ---------------------------------------------------------------------------

    def frame(self, t: int, visibility: bool = False) -> tuple[np.ndarray, list[DrawnInstance]]:
        """Frame t >= 0: rgb (H, W, 3) uint8 and its visible instances (masks (H, W) bool; with
        `visibility`, the fraction of each that shows, see `Canvas.instances`)."""
        if t < 0:
            raise ValueError(f"StreetScene.frame: t={t}, expected a frame index >= 0")
        rgb = self.sky.copy()
        rgb[self.ground_top:] = self._ground(self.camera_speed * t)
        canvas = Canvas(rgb)
        for tid, quad, colour in self.markings(t):
            canvas.fill(self.camera.project(quad[:, 0], quad[:, 1], quad[:, 2]), colour, canvas.begin(LANE, tid))
        things = [(car.z, self.draw_car, car) for car in self.cars(t)]
        things += [(person.z, self.draw_person, person) for person in self.people(t)]
        for _, draw, thing in sorted(things, key=lambda item: -item[0]):
            draw(canvas, thing)
        return self._camera_effects(canvas.rgb, t), canvas.instances(visibility)

    def _camera_effects(self, rgb: np.ndarray, t: int) -> np.ndarray:
        """Blur, lighting drift (brightness, contrast, tint) and sensor noise, all slow functions of t."""
        a = self.lighting

        def wave(phase: float, period: float) -> float:
            return math.sin(2 * math.pi * (t / period + phase))

        blur = self.blur_strength * max(wave(a[0], 97 + 200 * a[1]), 0.0)
        if blur > 0.3:
            rgb = cv2.GaussianBlur(rgb, (0, 0), blur)
        gain = 1.0 + 0.3 * a[2] * wave(a[3], 150 + 400 * a[4])
        contrast = 1.0 + 0.25 * a[5] * wave(a[6], 230 + 300 * a[7])
        tint = np.array([1.0 + 0.06 * (a[2] - 0.5), 1.0, 1.0 + 0.06 * (a[5] - 0.5)])
        levels = np.arange(256, dtype=np.float64)[:, None]
        lut = ((levels - 128) * contrast + 128) * gain * tint
        rgb = cv2.LUT(rgb, np.clip(lut, 0, 255).astype(np.uint8).reshape(256, 1, 3))
        return np.clip(rgb + self.noise[t % NOISE_BANK], 0, 255).astype(np.uint8)


# -- data set writer ---------------------------------------------------------------------------

def coco_categories() -> list[dict]:
    return [{"id": i, "name": name, "supercategory": "street"} for i, name in enumerate(CLASS_NAMES) if i > 0]


def coco_annotations(instances: list[DrawnInstance], image_id: int, first_id: int) -> list[dict]:
    """Instances of one image -> COCO annotations with compressed RLE, ids from first_id (and the
    instance's `visibility` where it was computed)."""
    annotations = []
    for k, inst in enumerate(instances):
        rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
        x1, y1, x2, y2 = inst.box
        annotations.append({"id": first_id + k, "image_id": image_id, "category_id": inst.class_id,
                            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                            "area": int(inst.mask.sum()), "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0,
                            "track_id": inst.track_id})
        if inst.visibility is not None:
            annotations[-1]["visibility"] = round(inst.visibility, 4)
    return annotations


def write_dataset(out_dir: str | Path, images: int, seed: int, width: int = 640, height: int = 360,
                  frames_per_sequence: int = 1, frame_step: int = 1, progress: bool = True) -> Path:
    """Write `images` generated frames to out_dir/images/*.png and out_dir/annotations.json (COCO).

    Frames come in sequences of `frames_per_sequence` frames `frame_step` apart, each sequence
    from its own scene at a random start time; scene seeds and start times follow from `seed`.
    Sequences (frames_per_sequence > 1) also give each annotation its object's `visibility`
    (tracking ground truth; a still-image data set is written exactly as before it existed).
    Returns the annotations path.
    """
    if images < 1 or frames_per_sequence < 1 or frame_step < 1:
        raise DataError("write_dataset: images, frames_per_sequence and frame_step must be >= 1")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image_records, annotations = [], []
    scene, t0, sequence = None, 0, -1
    for index in tqdm(range(images), desc=f"writing {out_dir}", unit="image", disable=not progress):
        if index % frames_per_sequence == 0:
            sequence += 1
            scene = StreetScene(int(rng.integers(2 ** 31)), width, height)
            t0 = int(rng.integers(0, 5000))
        t = t0 + (index % frames_per_sequence) * frame_step
        rgb, instances = scene.frame(t, visibility=frames_per_sequence > 1)
        image_id = index + 1
        name = f"{image_id:06d}.png"
        cv2.imwrite(str(out_dir / "images" / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        image_records.append({"id": image_id, "file_name": name, "width": width, "height": height,
                              "sequence": sequence, "scene_seed": scene.seed, "frame_index": t})
        annotations += coco_annotations(instances, image_id, len(annotations) + 1)
    data = {"info": {"description": "maskstream generated street scenes", "seed": seed},
            "images": image_records, "annotations": annotations, "categories": coco_categories()}
    path = out_dir / "annotations.json"
    path.write_text(json.dumps(data))
    return path


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskstream scenes", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="write a COCO data set of generated frames")
    write.add_argument("dir", help="output directory (images/ and annotations.json)")
    write.add_argument("--images", type=int, required=True, help="number of images")
    write.add_argument("--seed", type=int, required=True)
    write.add_argument("--width", type=int, default=640)
    write.add_argument("--height", type=int, default=360)
    write.add_argument("--frames-per-sequence", type=int, default=1,
                       help="consecutive frames taken from each scene (default 1: every image its own scene)")
    write.add_argument("--frame-step", type=int, default=1, help="frames between the images of a sequence")
    write.add_argument("--mots", action="store_true",
                       help="also write each sequence's ground truth as DIR/tracks/<seq>.mots.txt and .mot.txt")
    args = parser.parse_args(argv)
    if args.mots and args.frames_per_sequence < 2:
        raise DataError("--mots: tracking ground truth needs sequences (--frames-per-sequence 2 or more)")
    try:
        path = write_dataset(args.dir, args.images, args.seed, args.width, args.height,
                             args.frames_per_sequence, args.frame_step)
        print(f"wrote {args.images} images to {path}")
        if args.mots:
            from .mots import read_sequences, write_ground_truth
            sequences = read_sequences(json.loads(path.read_text()))
            written = write_ground_truth(sequences, Path(args.dir) / "tracks")
            print(f"wrote the tracks of {len(sequences)} sequences to {written[0].parent}")
    except OSError as e:
        raise DataError(f"{args.dir}: cannot write the data set there ({e.strerror})") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())

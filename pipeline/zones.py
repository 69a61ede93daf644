"""Zones: how many instances stand in each region of the frame, and which tracked objects cross a
counting line, per stream (what NVIDIA DeepStream's nvdsanalytics calls ROI counting and line
crossing). The publisher runs a `ZoneStage` per stream on each frame, after tracking, in `seq`
order and exactly once.

Configured in the pipeline's `zones:` list (`ZoneConfig`), in the frame's pixels, or in those of
a `frame_size` and scaled to each frame's size (what nvdsanalytics' config-width/config-height do:
one list for cameras of different resolutions):

    zones:
      - {name: door, polygon: [[0, 400], [300, 400], [300, 720], [0, 720]]}   # a region
      - {name: gate, line: [[640, 0], [640, 720]], streams: [cam1]}          # a counting line
      - {name: kerb, polygon: [[0, 600], [1280, 600], [1280, 720], [0, 720]], frame_size: [1280, 720]}

An instance is where its box's bottom centre is (where a person stands, where a car meets the
road). On the wire (additive to maskstream.frame/1, only with zones configured):
- each instance's `zones`: the regions it is in, in configuration order; with tracking also its
  `dwell_s`: per region it is in, the seconds (of `pts`) since its track entered it, kept across
  frames the object is missed and restarted when it leaves the region (`{}` for an instance in
  no confirmed track yet): how long a car has stood at the kerb, a person at the door;
- the frame's `zone_counts`: per region, its instances by label (`{"door": {"person": 2}}`);
- the frame's `crossings`: the confirmed tracks whose bottom centre crossed a line since their
  last frame, `{"line", "track_id", "label", "direction"}`, direction `in` when it ends on the
  right-hand side of the line walking from its first point to its second as the frame shows it,
  `out` the other way;
- the frame's `line_counts`: per line, the crossings so far in this stream,
  `{"gate": {"in": {"car": 3}, "out": {}}}`.
Lines and dwell times need tracking (the same object from frame to frame); a stage's
`snapshot()` carries the counts, where each track last was and when it entered each region over
a publisher restart.
"""
from __future__ import annotations

import copy
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from itertools import compress

import numpy as np

from models.config import require

from .protocol import CROSSING_DIRECTIONS as DIRECTIONS


@dataclass
class ZoneConfig:
    name: str                                   # the zone's name on the wire
    polygon: list[list[float]] | None = None    # a region: [[x, y], ...], at least 3 points, frame pixels
    line: list[list[float]] | None = None       # or a counting line: [[x1, y1], [x2, y2]], frame pixels
    streams: list[str] | None = None            # the stream ids it applies to; null: every stream
    frame_size: list[float] | None = None       # [width, height] the points are given at, scaled to each
    #                                             frame's size; null: the frame's own pixels

    def validate(self, path: str) -> None:
        require(bool(re.fullmatch(r"[\w. -]+", self.name)), path + ".name",
                "must be letters, digits, spaces, '.', '_' or '-'")
        require((self.polygon is None) != (self.line is None), path, "needs a polygon or a line (one of them)")
        if self.polygon is not None:
            require(len(self.polygon) >= 3 and all(len(p) == 2 for p in self.polygon), path + ".polygon",
                    "needs at least 3 [x, y] points")
        else:
            require(len(self.line) == 2 and all(len(p) == 2 for p in self.line), path + ".line",
                    "needs 2 [x, y] points")
            require(self.line[0] != self.line[1], path + ".line", "needs 2 different points")
        require(self.frame_size is None or (len(self.frame_size) == 2 and min(self.frame_size) > 0),
                path + ".frame_size", "must be [width, height], two positive numbers (or null: the frame's pixels)")

    def applies_to(self, stream_id: str) -> bool:
        return self.streams is None or stream_id in self.streams


def validate_zones(zones: list[ZoneConfig], tracking: bool, path: str = "zones") -> None:
    """Each zone valid, names distinct, lines only with tracking; ConfigError naming the first mistake."""
    for i, zone in enumerate(zones):
        zone.validate(f"{path}[{i}]")
        require(zone.name not in [z.name for z in zones[:i]], f"{path}[{i}].name", f"{zone.name!r} is used twice")
        require(zone.line is None or tracking, f"{path}[{i}].line",
                "a counting line needs tracking (tracking.enabled: true) to follow objects across it")


def scale(points, from_size, to_size) -> np.ndarray:
    """points (P, 2) x y in a frame of from_size (width, height) -> (P, 2) float64, the same places
    in a frame of to_size (width, height): x times to_width / from_width, y times to_height / from_height."""
    (from_width, from_height), (to_width, to_height) = from_size, to_size
    return np.asarray(points, np.float64).reshape(-1, 2) * [to_width / from_width, to_height / from_height]


def placed(zone: ZoneConfig, size: tuple[int, int]) -> np.ndarray:
    """A zone's polygon (V, 2) or line (2, 2), float64, in the pixels of a frame of size (width,
    height): scaled from its frame_size, as given without one."""
    points = zone.polygon if zone.polygon is not None else zone.line
    return scale(points, zone.frame_size, size) if zone.frame_size is not None else np.array(points, np.float64)


@dataclass(frozen=True)
class ZoneGeometry:
    """One stream's zones in the pixels of one frame size, in configuration order: regions
    ((name, polygon (V, 2)), ...) and counting lines ((name, line (2, 2)), ...), float64."""
    regions: tuple[tuple[str, np.ndarray], ...]
    lines: tuple[tuple[str, np.ndarray], ...]


def zone_geometry(zones: list[ZoneConfig], size: tuple[int, int]) -> ZoneGeometry:
    """The zones' regions and lines in the pixels of a frame of size (width, height)."""
    return ZoneGeometry(tuple((zone.name, placed(zone, size)) for zone in zones if zone.polygon is not None),
                        tuple((zone.name, placed(zone, size)) for zone in zones if zone.line is not None))


def anchors(boxes: np.ndarray) -> np.ndarray:
    """boxes (N, 4) x1 y1 x2 y2 -> (N, 2) float64 the bottom centre of each box."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, boxes[:, 3]], axis=1)


def inside(polygon: np.ndarray, points: np.ndarray) -> np.ndarray:
    """polygon (V, 2), points (N, 2) -> (N,) bool: inside the polygon (even-odd rule, any simple
    polygon, convex or not) or on its edge; what OpenCV's pointPolygonTest(...) >= 0 says, for
    all points at once (tests/test_zones.py checks one against the other)."""
    a = np.asarray(polygon, np.float64)[None]                   # (1, V, 2) each edge from a to b
    b = np.roll(a, -1, axis=1)
    p = np.asarray(points, np.float64).reshape(-1, 1, 2)       # (N, 1, 2)
    ax, ay, bx, by, px, py = a[..., 0], a[..., 1], b[..., 0], b[..., 1], p[..., 0], p[..., 1]
    cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
    on_edge = ((cross == 0) & (np.minimum(ax, bx) <= px) & (px <= np.maximum(ax, bx))
               & (np.minimum(ay, by) <= py) & (py <= np.maximum(ay, by))).any(axis=1)
    straddles = (ay > py) != (by > py)                          # the edge crosses the point's row
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = ax + (py - ay) * (bx - ax) / (by - ay)
    return on_edge | ((straddles & (px < x_at)).sum(axis=1) % 2 == 1)


def side(line: np.ndarray, points: np.ndarray) -> np.ndarray:
    """line (2, 2) first and second point, points (N, 2) -> (N,) float64: > 0 on the right-hand side of
    the line walking from its first point to its second as the frame shows it (y down), < 0 on the
    left, 0 on it (the z of the cross product)."""
    (ax, ay), (bx, by) = np.asarray(line, np.float64)
    points = np.asarray(points, np.float64).reshape(-1, 2)
    return (bx - ax) * (points[:, 1] - ay) - (by - ay) * (points[:, 0] - ax)


def crossings(line: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """line (2, 2), movements from start (N, 2) to end (N, 2) -> (N,) int: +1 where the movement
    crosses the line segment to its right-hand side (`in`), -1 to its left (`out`), 0 where it does
    not cross it (ends on it, stays on one side, or passes beyond either end of the segment)."""
    start, end = np.asarray(start, np.float64).reshape(-1, 2), np.asarray(end, np.float64).reshape(-1, 2)
    before, after = side(line, start), side(line, end)
    a, b = np.asarray(line, np.float64)
    # The line's two ends on opposite sides of each movement (or one of them on it).
    da = (end[:, 0] - start[:, 0]) * (a[1] - start[:, 1]) - (end[:, 1] - start[:, 1]) * (a[0] - start[:, 0])
    db = (end[:, 0] - start[:, 0]) * (b[1] - start[:, 1]) - (end[:, 1] - start[:, 1]) * (b[0] - start[:, 0])
    through = (before * after < 0) & (da * db <= 0)
    return np.where(through, np.sign(after), 0).astype(np.int64)


@dataclass
class RegionState:
    """One region's state in one stream: the pts at which each track now in it entered it."""
    entered: dict[int, float] = field(default_factory=dict)


@dataclass
class LineState:
    """One counting line's state in one stream: where each track was last seen off the line, and
    the crossings so far by direction and label."""
    last: dict[int, tuple[float, float]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: {d: {} for d in DIRECTIONS})


class ZoneStage:
    """The zones of one stream: `apply` each frame record in seq order, exactly once, after tracking.

        stage = ZoneStage(config.zones, "cam1")
        record = stage.apply(record)      # instances' zones, zone_counts, crossings, line_counts
        stage.geometry(1280, 720)         # its regions and lines in a 1280x720 frame's pixels
        saved = stage.snapshot()          # ZoneStage(..., state=saved) goes on from it
    """

    def __init__(self, zones: list[ZoneConfig], stream_id: str,
                 state: dict[str, RegionState | LineState] | None = None):
        self.zones = [zone for zone in zones if zone.applies_to(stream_id)]
        self.region_names = [zone.name for zone in self.zones if zone.polygon is not None]
        self.line_names = [zone.name for zone in self.zones if zone.line is not None]
        self._geometry: dict[tuple[int, int], ZoneGeometry] = {}   # by frame size (width, height)
        fresh = {**{name: RegionState() for name in self.region_names},
                 **{name: LineState() for name in self.line_names}}
        self.state = copy.deepcopy(state) if state is not None else fresh

    def __bool__(self) -> bool:
        return bool(self.region_names or self.line_names)

    def geometry(self, width: int, height: int) -> ZoneGeometry:
        """The zones in the pixels of a width x height frame (`placed`), worked out once per size."""
        size = (int(width), int(height))
        if size not in self._geometry:
            self._geometry[size] = zone_geometry(self.zones, size)
        return self._geometry[size]

    def apply(self, record):
        """A `pipeline.protocol.FrameRecord` -> the record with the fields of the module docstring
        (region fields only when the stream has regions, line fields only when it has lines), its
        zones placed in its frame's size (`record.width` x `record.height`)."""
        geometry = self.geometry(record.width, record.height)
        instances = record.instances
        points = anchors([inst.box for inst in instances])                          # (N, 2)
        track_ids = [inst.track_id for inst in instances]
        changes = {}
        if geometry.regions:
            within = [inside(polygon, points).tolist() for _, polygon in geometry.regions]   # per region, N bools
            rows = list(zip(*within))                                                  # per instance, R bools
            dwell = self._dwell(record, track_ids, within, rows)
            changes["instances"] = tuple(replace(inst, zones=tuple(compress(self.region_names, row)), dwell_s=dwell_i)
                                         for inst, row, dwell_i in zip(instances, rows, dwell))
            labels = [inst.label for inst in instances]
            changes["zone_counts"] = {name: dict(Counter(compress(labels, w)))            # labels in order of score
                                      for name, w in zip(self.region_names, within)}
        if geometry.lines:
            changes["crossings"] = tuple(self._cross(record, geometry.lines, track_ids, points))  # counts first,
            changes["line_counts"] = self.line_counts()                                             # then the totals
        return replace(record, **changes)

    def _dwell(self, record, track_ids: list, within: list[list[bool]],
               rows: list[tuple[bool, ...]]) -> list[dict[str, float] | None]:
        """Per instance, {region: seconds since its track entered it} for the regions it is in ({}
        without a confirmed track; None without tracking), the regions' state brought up to date:
        tracks seen outside a region or ended leave it; a track missed in this frame stays.
        `within` per region and `rows` per instance say which instances stand in which region."""
        pts = float(record.pts)
        entered = [self.state[name].entered for name in self.region_names]
        for region, w in zip(entered, within):
            for track_id in record.tracks_ended or ():
                region.pop(track_id, None)
            for track_id, w_i in zip(track_ids, w):
                if track_id and not w_i:
                    region.pop(track_id, None)
                elif track_id:
                    region.setdefault(int(track_id), pts)
        return [None if track_id is None else
                {name: pts - region[track_id] for name, region, w_i in zip(self.region_names, entered, row)
                 if track_id and w_i}
                for track_id, row in zip(track_ids, rows)]

    def _cross(self, record, lines, track_ids: list, points: np.ndarray) -> list[dict]:
        """The crossings at this frame of `lines` ((name, line (2, 2)), ...) by the instances standing
        at `points` (N, 2), as wire-ready dicts, counted into the lines' state."""
        tracked = [i for i, track_id in enumerate(track_ids) if track_id]
        ids = [int(track_ids[i]) for i in tracked]
        labels = [record.instances[i].label for i in tracked]
        now = points[tracked]                                   # (T, 2)
        now_xy = [tuple(xy) for xy in now.tolist()]
        events = []
        for name, line in lines:
            state = self.state[name]
            for track_id in record.tracks_ended or ():
                state.last.pop(track_id, None)
            if not tracked:
                continue
            before = np.array([state.last.get(track_id, xy) for track_id, xy in zip(ids, now_xy)], np.float64)
            moved = crossings(line, before, now)
            for k in np.flatnonzero(moved).tolist():
                direction = DIRECTIONS[0] if moved[k] > 0 else DIRECTIONS[1]
                state.counts[direction][labels[k]] = state.counts[direction].get(labels[k], 0) + 1
                events.append({"line": name, "track_id": ids[k], "label": labels[k], "direction": direction})
            # Where each track was last seen off the line: one that stops on it crosses when it leaves it.
            off = (side(line, now) != 0).tolist()
            state.last.update({track_id: xy for track_id, xy, off_k in zip(ids, now_xy, off) if off_k})
        return events

    def line_counts(self, saved: dict[str, RegionState | LineState] | None = None
                    ) -> dict[str, dict[str, dict[str, int]]]:
        """Per line, the crossings so far by direction and label: a copy of the stage's; from `saved`,
        a `snapshot()` of this stage, that snapshot's own (a copy already)."""
        if saved is not None:
            return {name: saved[name].counts for name in self.line_names}
        return {name: {direction: dict(by_label) for direction, by_label in self.state[name].counts.items()}
                for name in self.line_names}

    def snapshot(self) -> dict[str, RegionState | LineState]:
        """A copy of the regions' and lines' state, unaffected by the frames that follow."""
        return copy.deepcopy(self.state)


def zone_figures(frame) -> dict[str, str]:
    """A received frame's zone fields for people, by zone name: `person 2, car 1` for a region,
    `in car 3, out none` for a line (its crossings so far); {} without zones."""
    figures = {name: label_figure(by_label) for name, by_label in (frame.zone_counts or {}).items()}
    figures.update({name: line_figure(totals) for name, totals in (frame.line_counts or {}).items()})
    return figures


def label_figure(by_label: dict[str, int]) -> str:
    """{label: count} -> `person 2, car 1` (`none` when empty)."""
    return ", ".join(f"{label} {n}" for label, n in by_label.items()) or "none"


def line_figure(totals: dict[str, dict[str, int]]) -> str:
    """A line's totals {direction: {label: count}} -> `in car 3, out none`."""
    return ", ".join(f"{direction} {label_figure(by_label)}" for direction, by_label in totals.items())

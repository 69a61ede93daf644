"""Drawing a frame's instances (coloured masks, boxes, labels, scores, track ids) onto an image,
and the publisher's zones (regions, counting lines with their direction, their counts).

Shared by the publisher's overlay-video sink, ``maskstream consume --video`` and the live view
(``pipeline.view``).
"""
import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

from workers.results import InstanceRecord, rle_runs, runs_of_ones

MASK_OPACITY = 0.5
MASK_WEIGHT = round(MASK_OPACITY * 256)  # the blend in integers: (pixel * (256 - w) + colour * w) >> 8
GOLDEN_RATIO_CONJUGATE = 0.618033988749895
ZONE_COLOUR = (0, 200, 255)  # BGR amber: regions and counting lines
CLASS_SATURATION = 0.85
TRACK_SATURATION = 0.6  # tracks of one class still differ from each other and from class colours


def _stepped_colour(index: int, saturation: float) -> tuple[int, int, int]:
    """A BGR colour for ``index``; hues step by the golden ratio so neighbouring indices differ."""
    hue = (index * GOLDEN_RATIO_CONJUGATE) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, 1.0)
    return int(blue * 255), int(green * 255), int(red * 255)


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A BGR colour per class."""
    return _stepped_colour(class_id, CLASS_SATURATION)


def track_colour(track_id: int) -> tuple[int, int, int]:
    """A BGR colour per track: the same object keeps its colour from frame to frame."""
    return _stepped_colour(track_id, TRACK_SATURATION)


def instance_colour(inst: InstanceRecord) -> tuple[int, int, int]:
    """The colour of an instance: its track's when it has a ``track_id`` (0: in no track yet), else its class's."""
    return track_colour(inst.track_id) if inst.track_id else class_colour(inst.class_id)


def caption(inst: InstanceRecord) -> str:
    """``label score``, led by ``#track_id`` when the instance has one, followed by how long it has
    stood in each region it is in (``door 12s``, its ``dwell_s``, with zones and tracking)."""
    text = f"{inst.label} {inst.score:.2f}"
    text = f"#{inst.track_id} {text}" if inst.track_id else text
    return " ".join([text, *(f"{zone} {seconds:.0f}s" for zone, seconds in (inst.dwell_s or {}).items())])


def draw_instances(image: np.ndarray, instances: Sequence[InstanceRecord]) -> np.ndarray:
    """Draws wire-format instances onto ``image`` (H, W, 3) uint8 BGR, in place, and returns it.

    Masks are COCO RLE of the image's size; boxes are [x1, y1, x2, y2] pixels.
    """
    if not instances:
        return image
    for inst, (top, left, inside) in zip(instances, mask_crops([inst.rle for inst in instances])):
        colour = instance_colour(inst)
        if inside is not None:
            region = image[top:top + inside.shape[0], left:left + inside.shape[1]]
            blended = ((region.astype(np.uint16) * (256 - MASK_WEIGHT) + np.array(colour, np.uint16) * MASK_WEIGHT)
                       >> 8).astype(np.uint8)
            np.copyto(region, blended, where=inside[:, :, None])
        x1, y1, x2, y2 = (int(round(v)) for v in inst.box)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, 2)
        _draw_caption(image, caption(inst), (x1, y1), colour)
    return image


def mask_crops(rles: list[dict]) -> list[tuple[int, int, np.ndarray | None]]:
    """COCO RLEs of (H, W) masks -> per mask (top row, left column, (h, w) bool: the mask within
    its bounding box), or (0, 0, None) for an empty mask. Decoded from the runs over the columns
    the mask spans only: a 720p frame's two dozen masks in a few milliseconds, where whole-frame
    masks took tens."""
    out = []
    for rle, runs in zip(rles, rle_runs(rles)):
        height = int(rle["size"][0])
        starts, lengths = runs_of_ones(runs)
        starts, stops = starts[lengths > 0], (starts + lengths)[lengths > 0]   # each run of ones: [start, stop)
        if len(starts) == 0:
            out.append((0, 0, None))
            continue
        first, last = int(starts[0]) // height, (int(stops[-1]) - 1) // height + 1
        change = np.zeros(height * (last - first) + 1, np.int64)
        np.add.at(change, starts - first * height, 1)
        np.add.at(change, stops - first * height, -1)
        inside = np.cumsum(change[:-1]).astype(bool).reshape(last - first, height).T
        rows = np.flatnonzero(inside.any(axis=1))
        out.append((int(rows[0]), first, inside[rows[0]:rows[-1] + 1]))
    return out


def render_frame(width: int, height: int, instances: Sequence[InstanceRecord],
                 image_rgb: np.ndarray | None = None) -> np.ndarray:
    """A frame with its instances drawn: (height, width, 3) uint8 BGR.

    ``image_rgb``: the frame's pixels, (h, w, 3) uint8 RGB, resized to width x height when it
    was sent smaller; without it the instances are drawn on a black canvas of the frame's size.
    """
    if image_rgb is None:
        canvas = np.zeros((height, width, 3), np.uint8)
    else:
        canvas = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
        if canvas.shape[:2] != (height, width):
            canvas = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_LINEAR)
    return draw_instances(canvas, instances)


def draw_zones(image: np.ndarray, geometry, figures: dict[str, str]) -> np.ndarray:
    """Draws zones onto ``image`` (H, W, 3) uint8 BGR, in place, and returns it: ``geometry``, a
    ``pipeline.zones.ZoneGeometry`` in the image's pixels (``ZoneStage.geometry(W, H)``), each of
    its regions ((name, polygon (V, 2)), ...) outlined, each counting line ((name, line (2, 2)), ...)
    an arrow from its first point to its second (its `in` side is on the arrow's right), each named
    with its ``figures[name]`` (``pipeline.zones.zone_figures``) at its first point."""
    for name, points in [*geometry.regions, *geometry.lines]:
        corners = np.round(points).astype(np.int32)
        if len(corners) == 2:
            length = max(float(np.hypot(*(corners[1] - corners[0]))), 1.0)
            cv2.arrowedLine(image, tuple(map(int, corners[0])), tuple(map(int, corners[1])), ZONE_COLOUR, 2,
                            cv2.LINE_AA, tipLength=min(0.2, 15 / length))
        else:
            cv2.polylines(image, [corners.reshape(-1, 1, 2)], True, ZONE_COLOUR, 2, cv2.LINE_AA)
        text = f"{name}: {figures[name]}" if name in figures else name
        _draw_caption(image, text, (int(corners[0, 0]), int(corners[0, 1])), ZONE_COLOUR)
    return image


def _draw_caption(image: np.ndarray, text: str, corner: tuple[int, int],
                  colour: tuple[int, int, int]) -> None:
    """Black text on a filled box of ``colour`` just above ``corner`` (inside the image: moved left
    where it would run past the right edge)."""
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    (width, height), baseline = cv2.getTextSize(text, font, scale, thickness)
    x = max(min(corner[0], image.shape[1] - width), 0)
    y = max(corner[1], height + baseline)
    cv2.rectangle(image, (x, y - height - baseline), (x + width, y), colour, cv2.FILLED)
    cv2.putText(image, text, (x, y - baseline), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)

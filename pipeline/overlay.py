"""Drawing a frame's instances (coloured masks, boxes, labels, scores) onto an image: a colour
per class, or with tracking a colour per track, captioned with its ``#id``.

Shared by the publisher's overlay-video sink and ``maskstream consume --video``.
"""
import colorsys
from collections.abc import Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from workers.results import InstanceRecord

MASK_OPACITY = 0.5
GOLDEN_RATIO_CONJUGATE = 0.618033988749895


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A BGR colour per class (or per track id); hues step by the golden ratio so neighbouring ids differ."""
    hue = (class_id * GOLDEN_RATIO_CONJUGATE) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(blue * 255), int(green * 255), int(red * 255)


def instance_colour(inst: InstanceRecord) -> tuple[int, int, int]:
    """Its track's colour where it is in a track (the same in every frame), else its class's."""
    return class_colour(inst.track_id) if inst.track_id else class_colour(inst.class_id)


def caption(inst: InstanceRecord) -> str:
    """`label score`, after `#id` where it is in a track."""
    return (f"#{inst.track_id} " if inst.track_id else "") + f"{inst.label} {inst.score:.2f}"


def draw_instances(image: np.ndarray, instances: Sequence[InstanceRecord]) -> np.ndarray:
    """Draws instances onto ``image`` (H, W, 3) uint8 BGR, in place, and returns it.

    Masks are COCO RLE of the image's size; boxes are [x1, y1, x2, y2] pixels.
    """
    if not instances:
        return image
    masks = mask_utils.decode([inst.rle for inst in instances])  # (H, W, N) uint8
    for index, inst in enumerate(instances):
        colour = instance_colour(inst)
        inside = masks[:, :, index].astype(bool)
        image[inside] = (image[inside] * (1 - MASK_OPACITY)
                         + np.array(colour) * MASK_OPACITY).astype(np.uint8)
        x1, y1, x2, y2 = (int(round(v)) for v in inst.box)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, 2)
        _draw_caption(image, caption(inst), (x1, y1), colour)
    return image


def _draw_caption(image: np.ndarray, text: str, corner: tuple[int, int],
                  colour: tuple[int, int, int]) -> None:
    """Black text on a filled box of ``colour`` just above ``corner`` (inside the image)."""
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    (width, height), baseline = cv2.getTextSize(text, font, scale, thickness)
    x = max(corner[0], 0)
    y = max(corner[1], height + baseline)
    cv2.rectangle(image, (x, y - height - baseline), (x + width, y), colour, cv2.FILLED)
    cv2.putText(image, text, (x, y - baseline), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)

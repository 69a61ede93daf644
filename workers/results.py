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


@dataclass(frozen=True)
class InstanceRecord:
    """One detected instance: ``box`` is (x1, y1, x2, y2) in pixels, ``rle`` the mask in COCO
    compressed RLE ({"size": [height, width], "counts": str}; "mask" on the wire); ``track_id`` the
    object's identity across the stream's frames, set by the pipeline's tracking stage (0 for an
    instance in no confirmed track yet; None, and not on the wire, without tracking)."""
    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]
    rle: dict = field(repr=False)
    track_id: int | None = None

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
        return wire

    @classmethod
    def from_wire(cls, data: dict) -> InstanceRecord:
        return cls(data["class_id"], data["label"], data["score"], tuple(data["box"]), data["mask"],
                   data.get("track_id"))


def instance_records(detections) -> tuple[InstanceRecord, ...]:
    """A frame's `models.Detections` (predicted with masks="rle") as instance records."""
    return tuple(InstanceRecord(int(class_id), label, float(score), tuple(float(v) for v in box), rle)
                 for class_id, label, score, box, rle in zip(detections.class_ids, detections.labels,
                                                             detections.scores, detections.boxes,
                                                             detections.rles))

"""Frames of the clips in ../shared/data, decoded as the ingest decodes them (RGB uint8), for the benchmarks."""
from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PEDESTRIANS = DATA / "pedestrians_720p.avi"


def decode(clip: Path, frames: int | None = None, indices: list[int] | None = None) -> list[np.ndarray]:
    """The clip's first `frames` frames, or the frames at `indices`, as (H, W, 3) RGB arrays."""
    from pipeline.sources import open_source, parse_source

    source = open_source(parse_source(str(clip)))
    wanted = set(indices) if indices is not None else None
    decoded, index = [], 0
    while (frames is None or len(decoded) < frames) and (wanted is None or index <= max(wanted)):
        frame = source.read()
        if frame is None:
            break
        if wanted is None or index in wanted:
            decoded.append(frame.rgb.copy())
        index += 1
    source.close()
    return decoded

"""The overlay's cost per frame: `draw_instances` (each mask decoded from its runs and blended
within its box) beside the whole-frame way it replaced (every mask decoded by pycocotools to a
full frame and blended over the full frame), on the same frames and instances, in one run.

    python bench/overlay.py [--frames 40] [--threshold 0.5]

The instances are the default model's on the first frames of ../shared/data/pedestrians_720p.avi
(1280x720) at the pipeline's publish threshold. Both ways are timed call by call, interleaved;
medians in ms per frame. Also checked: both give the same pixels. Prints a table and writes
bench/results/overlay.json.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from pipeline.overlay import MASK_OPACITY, _draw_caption, caption, draw_instances, instance_colour  # noqa: E402

CLIP = REPO.parent / "shared" / "data" / "pedestrians_720p.avi"


def whole_frame_draw(image: np.ndarray, instances) -> np.ndarray:
    """The way before: every mask decoded to a full frame, blended over the full frame."""
    if not instances:
        return image
    masks = mask_utils.decode([inst.rle for inst in instances])
    for index, inst in enumerate(instances):
        colour = instance_colour(inst)
        inside = masks[:, :, index].astype(bool)
        image[inside] = (image[inside] * (1 - MASK_OPACITY) + np.array(colour) * MASK_OPACITY).astype(np.uint8)
        x1, y1, x2, y2 = (int(round(v)) for v in inst.box)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, 2)
        _draw_caption(image, caption(inst), (x1, y1), colour)
    return image


def frames_and_instances(count: int, threshold: float):
    from models.config import EMBEDDED_MODEL, EMBEDDED_WEIGHTS
    from models.mask_rcnn import load_model
    from workers.results import instance_records

    capture = cv2.VideoCapture(str(CLIP))
    frames = []
    while len(frames) < count:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(bgr)
    model = load_model(str(EMBEDDED_MODEL), str(EMBEDDED_WEIGHTS))
    out = []
    for i in range(0, len(frames), 4):
        batch = frames[i:i + 4]
        for bgr, detections in zip(batch, model.predict([cv2.cvtColor(b, cv2.COLOR_BGR2RGB) for b in batch],
                                                        masks="rle")):
            kept = [inst for inst in instance_records(detections) if inst.score >= threshold]
            out.append((bgr, kept))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--threshold", type=float, default=0.5, help="the publish score threshold")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "overlay.json")
    args = parser.parse_args(argv)
    work = frames_and_instances(args.frames, args.threshold)
    times = {"whole frame": [], "draw_instances": []}
    same = True
    for bgr, instances in work:
        for name, draw in (("whole frame", whole_frame_draw), ("draw_instances", draw_instances)):
            image = bgr.copy()
            start = time.perf_counter()
            draw(image, instances)
            times[name].append((time.perf_counter() - start) * 1e3)
            if name == "whole frame":
                reference = image
        same &= bool(np.array_equal(reference, image))
    medians = {name: statistics.median(values) for name, values in times.items()}
    report = {"frames": len(work), "frame": list(work[0][0].shape[:2]),
              "instances_per_frame": statistics.mean(len(instances) for _, instances in work),
              "ms_per_frame": medians, "ratio": medians["whole frame"] / medians["draw_instances"],
              "same_pixels": same, "load_average": os.getloadavg()[0]}
    print(f"{'way':<16}{'ms a frame (median)':>22}")
    for name, value in medians.items():
        print(f"{name:<16}{value:>22.1f}")
    print(f"{report['frames']} frames of {report['frame'][1]}x{report['frame'][0]}, "
          f"{report['instances_per_frame']:.1f} instances a frame; {report['ratio']:.1f}x; same pixels: {same}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

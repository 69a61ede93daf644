"""Mask R-CNN in TensorFlow, usable on its own as a library.

    import models
    model = models.load_model("configs/coco_r50_fpn.yaml", weights="coco.npz")
    results = model.predict(frames)          # list of uint8 RGB (H, W, 3) arrays, or one (B, H, W, 3) array
    r = results[0]
    r.boxes      # (N, 4) float32, x1 y1 x2 y2 in that frame's pixels
    r.scores     # (N,) float32, descending
    r.class_ids  # (N,) int32
    r.labels     # list of N class names
    r.masks      # (N, H, W) bool (with masks="full"), else None
    r.rles       # list of N COCO compressed RLE dicts {"size": [H, W], "counts": str} (with masks="rle")

`predict(frames, masks="full" | "rle" | "none")`. Frames of the same size run as one compiled
graph call; a batch of different sizes returns exactly what separate calls would.

This package never imports Ray or ZeroMQ.
"""
import os

# TensorFlow's C++ start-up and graph-cost chatter is noise for users; real errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .config import ConfigError, ModelConfig, load_config  # noqa: E402
from .mask_rcnn import Detections, MaskRCNN, load_model  # noqa: E402
from .weights import WeightsError, load_weights, save_weights  # noqa: E402

__all__ = ["ConfigError", "Detections", "MaskRCNN", "ModelConfig", "WeightsError", "load_config",
           "load_model", "load_weights", "save_weights"]

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

The inference stages are the modules of this package (one per stage: preprocess, backbone, fpn,
anchors, rpn, roi_align, roi_heads, postprocess, wired in mask_rcnn; each training loss beside its
stage); the tooling lives one level down: `models.training` (the trainer and its command line),
`models.data` (COCO data sets, augmentation, generated scenes), `models.tools` (evaluation,
weight conversion). This package never imports Ray or ZeroMQ.
"""
import importlib
import os

# TensorFlow's C++ graph-cost chatter is noise for users; real errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Attributes load on first use, so `models.config` (pure Python) does not pull in TensorFlow.
_EXPORTS = {
    "ConfigError": "errors", "MaskstreamError": "errors", "WeightsError": "errors",
    "ModelConfig": "config", "load_config": "config",
    "Detections": "mask_rcnn", "MaskRCNN": "mask_rcnn", "load_model": "mask_rcnn",
    "load_weights": "weights", "save_weights": "weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

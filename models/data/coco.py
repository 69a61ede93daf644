"""COCO-format instance data sets into `tf.data`, for training and evaluating Mask R-CNN.

A data spec is a directory holding `annotations.json` and `images/` (what
`python -m models.data.scenes write` makes), or `coco:ANNOTATIONS_JSON:IMAGE_DIR`. Segmentations may
be polygons, uncompressed or compressed RLE; pycocotools reads them.

    data = CocoDataset("data/train")           # or CocoDataset("coco:ann.json:imgs")
    data.class_names                           # ["__background__", "car", ...]: training ids 0..K
    data.category_of_class[1]                  # the COCO category id of training class 1
    for batch in data.dataset(training=True, batch_size=2, seed=0).take(10): ...

Per image (`dataset` batches them: each gains a leading batch axis):
    image       uint8 (H, W, 3) RGB
    image_size  int32 (2,) the image's true height and width
    image_id    int64 () its COCO image id
    boxes       float32 (N, 4) x1, y1, x2, y2 in pixels (COCO bbox x, y, x + w, y + h)
    class_ids   int32 (N,) training ids 1..K, contiguous in the order of the COCO category ids
    masks       uint8 (N, M, M) "mini masks": instance i's mask inside its own box, as the fraction
                of each of M x M cells covered, times 255 (M = mask_size, 56 by default)

Why mini masks: a Mask R-CNN mask target is the ground-truth mask cropped to a proposal box and
resized to 28 x 28. Stored relative to its own box, a mask is small (N x 56 x 56 instead of
N x H x W), does not change under scale jitter, and still gives every proposal's target with one
`tf.image.crop_and_resize`: `models.roi_heads.roi_mask_targets` does exactly that (cells outside
the box are 0).

Batching: images of different sizes are zero-padded at the bottom and right to the largest in
the batch (`image_size` keeps each true size); instances are padded to the largest N with class
id 0, a zero box and a zero mask, so class id 0 marks padding. With batch_size 1 nothing is
padded: every batch has the shape of its one image.

Training (`training=True`): an endless stream in which images without a usable instance are
left out, the order is shuffled every epoch and each example goes through the augmentation
(`augment.py`: a random resize and a left-right flip; boxes follow, mini masks flip). Example k
of the stream depends only on the seed and k, so a stream started at k is the tail of the one
started at 0 (training resumes with it). Evaluation keeps every image in file order, unchanged.

Malformed annotations (an unknown image or category, a box that is not a positive size or
lies outside the image, an empty polygon, a segmentation pycocotools cannot read or of another
size, a mask of zero area) are skipped when the file is read, counted by reason in `skipped`
and reported once through `logging`; crowd annotations are kept for evaluation but not trained
on. A missing directory or file, a file that is not COCO JSON, or a missing image raises
`DataError` with one line naming the input.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import math
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..errors import DataError
from .augment import Augmentation, augment

log = logging.getLogger(__name__)

MASK_SIZE = 56
SUPERSAMPLE = 4          # bilinear samples per cell side when measuring mini-mask coverage
BOX_TOLERANCE = 1.0      # pixels a box may stick out of its image before it counts as outside


def parse_spec(spec: str | Path) -> tuple[Path, Path]:
    """A data spec -> (annotations JSON path, image directory), both checked to exist."""
    spec = str(spec)
    if spec.startswith("coco:"):
        parts = spec[len("coco:"):].split(":")
        if len(parts) != 2 or not all(parts):
            raise DataError(f"{spec}: expected coco:ANNOTATIONS_JSON:IMAGE_DIR")
        annotations, images = Path(parts[0]), Path(parts[1])
        if not annotations.is_file():
            raise DataError(f"{annotations}: no such annotations file")
    else:
        root = Path(spec)
        if not root.is_dir():
            raise DataError(f"{root}: no such data directory")
        annotations, images = root / "annotations.json", root / "images"
        if not annotations.is_file():
            raise DataError(f"{root}: no annotations.json (a data directory holds annotations.json and images/)")
    if not images.is_dir():
        raise DataError(f"{images}: no such image directory")
    return annotations, images


def read_coco_json(path: Path) -> dict:
    """The COCO instances mapping in `path`, its top level and its images and categories checked."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a COCO instances file (the top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: not a COCO instances file (no '{key}' list)")
    for key, fields in (("images", ("id", "file_name", "width", "height")), ("categories", ("id", "name"))):
        for i, entry in enumerate(data[key]):
            missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if missing:
                raise DataError(f"{path}: {key}[{i}] has no '{missing[0]}'")
    if not data["categories"]:
        raise DataError(f"{path}: no categories")
    return data


def annotation_rle(segmentation, height: int, width: int) -> tuple[dict | None, str | None]:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) -> (compressed RLE with a
    str 'counts', None), or (None, the reason it cannot be used)."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in p)]
        if not polygons:    # parts with fewer than 3 points have no area: dropping them loses nothing
            return None, "empty polygon"
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            return None, "segmentation size differs from the image"
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, str):
            rle = {"size": [height, width], "counts": counts.encode("ascii")}
        else:
            return None, "unreadable segmentation"
    else:
        return None, "unreadable segmentation"
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}, None


def check_annotation(ann, images: dict, categories: set) -> tuple[dict | None, str | None]:
    """One raw annotation -> (a clean annotation with RLE segmentation, None) or (None, reason)."""
    if not isinstance(ann, dict) or "id" not in ann:
        return None, "not an annotation object"
    image = images.get(ann.get("image_id"))
    if image is None:
        return None, "unknown image"
    if ann.get("category_id") not in categories:
        return None, "unknown category"
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)) or box[2] <= 0 or box[3] <= 0:
        return None, "bad box"
    x, y, w, h = box
    width, height = image["width"], image["height"]
    if (x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE or y + h > height + BOX_TOLERANCE
            or min(x + w, width) <= max(x, 0) or min(y + h, height) <= max(y, 0)):
        return None, "box outside image"
    try:
        rle, problem = annotation_rle(ann.get("segmentation"), image["height"], image["width"])
    except (TypeError, ValueError):   # pycocotools rejects counts it cannot parse
        rle, problem = None, "unreadable segmentation"
    if rle is None:
        return None, problem
    pixels = int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))
    if pixels == 0:
        return None, "zero area"
    area = ann.get("area")
    return {"id": ann["id"], "image_id": ann["image_id"], "category_id": ann["category_id"],
            "bbox": [float(v) for v in box], "segmentation": rle,
            "area": float(area) if isinstance(area, (int, float)) and area > 0 else float(pixels),
            "iscrowd": int(bool(ann.get("iscrowd", 0)))}, None


def mini_masks(masks: np.ndarray, boxes: np.ndarray, size: int = MASK_SIZE) -> np.ndarray:
    """Full-image masks (N, H, W) (0/1) and their boxes (N, 4) x1 y1 x2 y2 -> (N, size, size) uint8.

    Cell (i, j) of mask n covers the box region [x1 + j w / size, x1 + (j + 1) w / size) x (the
    same in y); its value is the covered fraction x 255, from SUPERSAMPLE^2 bilinear samples.
    """
    grid = size * SUPERSAMPLE
    out = np.zeros((len(masks), size, size), np.uint8)
    for n, (mask, (x1, y1, x2, y2)) in enumerate(zip(masks, boxes)):
        sx, sy = (x2 - x1) / grid, (y2 - y1) / grid
        # output sample j sits at box fraction (j + 0.5) / grid; OpenCV puts pixel centres at integers
        to_source = np.array([[sx, 0, x1 + 0.5 * sx - 0.5], [0, sy, y1 + 0.5 * sy - 0.5]], np.float64)
        samples = cv2.warpAffine(mask.astype(np.float32), to_source, (grid, grid),
                                 flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0)
        coverage = samples.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))
        out[n] = np.round(coverage * 255)
    return out


class CocoDataset:
    """A COCO instances data set, checked and cleaned on construction (see the module docstring)."""

    def __init__(self, spec: str | Path, mask_size: int = MASK_SIZE):
        self.annotations_path, self.image_dir = parse_spec(spec)
        self.mask_size = mask_size
        data = read_coco_json(self.annotations_path)
        self.images = {image["id"]: image for image in data["images"]}
        self.image_ids = [image["id"] for image in data["images"]]
        self._check_image_files()
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.class_names = ["__background__"] + [str(c["name"]) for c in categories]
        self.category_of_class = {k: c["id"] for k, c in enumerate(categories, 1)}
        self.class_of_category = {c: k for k, c in self.category_of_class.items()}
        self.skipped: Counter[str] = Counter()
        clean = []
        for ann in data["annotations"]:
            checked, problem = check_annotation(ann, self.images, set(self.class_of_category))
            if checked is None:
                self.skipped[problem] += 1
            else:
                clean.append(checked)
        self.coco = COCO()
        self.coco.dataset = {"images": data["images"], "categories": categories, "annotations": clean}
        with contextlib.redirect_stdout(io.StringIO()):    # pycocotools prints its progress
            self.coco.createIndex()
        self.crowd = sum(a["iscrowd"] for a in clean)
        self.train_ids = [i for i in self.image_ids if any(not a["iscrowd"] for a in self.coco.imgToAnns[i])]
        if self.skipped or self.crowd:
            log.warning("%s", self.summary())

    def _check_image_files(self) -> None:
        missing = [i for i in self.image_ids if not (self.image_dir / self.images[i]["file_name"]).is_file()]
        if missing:
            first = self.image_dir / self.images[missing[0]]["file_name"]
            raise DataError(f"{first}: image file missing (listed in {self.annotations_path}; "
                            f"{len(missing)} of {len(self.image_ids)} missing)")

    def summary(self) -> str:
        """One line: what was skipped and why."""
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
        skipped = f"skipped {sum(self.skipped.values())} malformed annotations ({reasons})" if self.skipped else \
            "no malformed annotations"
        return f"{self.annotations_path}: {skipped}; {self.crowd} crowd annotations kept for evaluation only"

    def load_image(self, image_id: int) -> np.ndarray:
        """The image's RGB pixels (H, W, 3) uint8; grayscale and RGBA files become RGB."""
        record = self.images[image_id]
        path = self.image_dir / record["file_name"]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError(f"{path}: not a readable image")
        if bgr.shape[:2] != (record["height"], record["width"]):
            raise DataError(f"{path}: {bgr.shape[1]}x{bgr.shape[0]} pixels, the annotations say "
                            f"{record['width']}x{record['height']}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def example(self, image_id: int) -> dict:
        """One image and its non-crowd instances as numpy arrays (keys as in the module docstring)."""
        image = self.load_image(image_id)
        anns = [a for a in self.coco.imgToAnns[image_id] if not a["iscrowd"]]
        height, width = image.shape[:2]
        boxes = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
        rles = [{"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode("ascii")}
                for a in anns]
        masks = np.moveaxis(mask_utils.decode(rles), -1, 0) if rles else np.zeros((0, height, width), np.uint8)
        return {"image": image, "image_size": np.array([height, width], np.int32),
                "image_id": np.int64(image_id), "boxes": boxes,
                "class_ids": np.array([self.class_of_category[a["category_id"]] for a in anns], np.int32),
                "masks": mini_masks(masks, boxes, self.mask_size)}

    def examples(self, training: bool, seed: int = 0, augmentation: Augmentation = Augmentation(), start: int = 0):
        """Yield examples. Evaluation: every image in file order, unchanged (the other arguments are
        not used). Training: an endless stream from example `start` on; example k is image
        perm_e[k mod n] of epoch e = k // n (perm_e a permutation drawn from (seed, e), n training
        images), augmented with draws from (seed, k)."""
        if not training:
            yield from (self.example(i) for i in self.image_ids)
            return
        if not self.train_ids:
            raise DataError(f"{self.annotations_path}: no image with an instance to train on")
        n = len(self.train_ids)
        for k in itertools.count(start):
            order = np.random.default_rng([seed, 0, k // n]).permutation(n)
            example = self.example(self.train_ids[order[k % n]])
            yield augment(example, augmentation, np.random.default_rng([seed, 1, k]))

    def dataset(self, training: bool, batch_size: int = 1, seed: int = 0, augmentation: Augmentation = Augmentation(),
                start: int = 0) -> tf.data.Dataset:
        """The examples as a tf.data.Dataset, padded into batches (see the module docstring); in
        training endless (take what you need)."""
        m = self.mask_size
        signature = {"image": tf.TensorSpec((None, None, 3), tf.uint8),
                     "image_size": tf.TensorSpec((2,), tf.int32),
                     "image_id": tf.TensorSpec((), tf.int64),
                     "boxes": tf.TensorSpec((None, 4), tf.float32),
                     "class_ids": tf.TensorSpec((None,), tf.int32),
                     "masks": tf.TensorSpec((None, m, m), tf.uint8)}
        data = tf.data.Dataset.from_generator(lambda: self.examples(training, seed, augmentation, start),
                                              output_signature=signature)
        return data.padded_batch(batch_size).prefetch(2)

"""COCO data input: generator round trip, the one augmentation path, malformed annotations, errors,
batching, the training stream."""
import json
import logging

import cv2
import numpy as np
import pytest

from models.data.augment import Augmentation, augment, flip_example, resize_example
from models.data.coco import MASK_SIZE, CocoDataset, mini_masks
from models.data.scenes import StreetScene, write_dataset
from models.errors import DataError
from models.image_size import resized_size

W, H = 160, 96


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    write_dataset(root, images=3, seed=3, width=W, height=H, progress=False)
    return root


def generator_truth(data: CocoDataset, image_id: int):
    record = data.images[image_id]
    return StreetScene(record["scene_seed"], W, H).frame(record["frame_index"])


def test_generated_set_round_trips_through_the_loader(generated):
    data = CocoDataset(generated)
    assert data.class_names == ["__background__", "car", "person", "lane"]
    assert data.category_of_class == {1: 1, 2: 2, 3: 3} and not data.skipped
    elements = list(data.dataset(training=False).as_numpy_iterator())
    assert [int(e["image_id"][0]) for e in elements] == data.image_ids == [1, 2, 3]
    pasted_iou = []
    for element in elements:
        rgb, instances = generator_truth(data, int(element["image_id"][0]))
        boxes = np.array([inst.box for inst in instances], np.float32)
        full = np.stack([inst.mask for inst in instances])
        np.testing.assert_array_equal(element["image"][0], rgb)
        np.testing.assert_array_equal(element["image_size"][0], [H, W])
        np.testing.assert_array_equal(element["boxes"][0], boxes)
        np.testing.assert_array_equal(element["class_ids"][0], [inst.class_id for inst in instances])
        np.testing.assert_array_equal(element["masks"][0], mini_masks(full, boxes))
        for mask, box, truth in zip(element["masks"][0], boxes.astype(int), full):
            x1, y1, x2, y2 = box
            if truth.sum() >= 60:   # paste back: the mini mask resized to its box is the instance again
                pasted = np.zeros_like(truth)
                pasted[y1:y2, x1:x2] = cv2.resize(mask, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR) >= 128
                pasted_iou.append((pasted & truth).sum() / (pasted | truth).sum())
    assert len(pasted_iou) >= 5 and min(pasted_iou) > 0.85


def one_example(data: CocoDataset):
    image_id = max(data.image_ids, key=lambda i: len(data.coco.imgToAnns[i]))
    return data.example(image_id), generator_truth(data, image_id)[1]


def test_flip_mirrors_image_boxes_and_masks_consistently(generated):
    example, instances = one_example(CocoDataset(generated))
    flipped = flip_example(example)
    np.testing.assert_array_equal(flipped["image"], example["image"][:, ::-1])
    mirrored = np.stack([inst.mask[:, ::-1] for inst in instances])
    tight = [[np.flatnonzero(m.any(0))[0], np.flatnonzero(m.any(1))[0],
              np.flatnonzero(m.any(0))[-1] + 1, np.flatnonzero(m.any(1))[-1] + 1] for m in mirrored]
    np.testing.assert_array_equal(flipped["boxes"], tight)            # boxes of the mirrored masks
    difference = np.abs(flipped["masks"].astype(int) - mini_masks(mirrored, flipped["boxes"]))
    assert difference.max() <= 1                                      # rounding of mirrored samples only
    again = flip_example(flipped)
    np.testing.assert_array_equal(again["boxes"], example["boxes"])
    np.testing.assert_array_equal(again["masks"], example["masks"])


def test_scale_jitter_scales_image_and_boxes_and_keeps_masks_valid(generated):
    example, instances = one_example(CocoDataset(generated))
    half = resize_example(example, (H // 2, W // 2))
    assert half["image"].shape == (H // 2, W // 2, 3)
    np.testing.assert_array_equal(half["image_size"], [H // 2, W // 2])
    np.testing.assert_allclose(half["boxes"], example["boxes"] * 0.5)
    # the masks of the resized image, cut at the scaled boxes, are (nearly) the same mini masks
    resized = np.stack([cv2.resize(inst.mask.astype(np.uint8), (W // 2, H // 2), interpolation=cv2.INTER_AREA)
                        for inst in instances])
    big = [i for i, inst in enumerate(instances) if inst.mask.sum() >= 400]
    assert big
    redone = mini_masks(resized[big], half["boxes"][big]).astype(int)
    assert np.abs(redone - half["masks"][big]).mean() < 20
    odd = resize_example(example, (round(H * 1.13), round(W * 1.13)))
    assert odd["image"].shape[:2] == (round(H * 1.13), round(W * 1.13))
    np.testing.assert_allclose(odd["boxes"][:, 2], example["boxes"][:, 2] * round(W * 1.13) / W, rtol=1e-6)


def write_crafted(root, annotations, categories=None):
    (root / "images").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "a.png"), np.full((30, 40, 3), 90, np.uint8))
    cv2.imwrite(str(root / "images" / "b.png"), np.full((30, 40), 50, np.uint8))     # grayscale file
    (root / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.png", "width": 40, "height": 30}],
        "annotations": annotations,
        "categories": categories or [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]}))
    return root


def polygon_annotation(ann_id, polygon, category=7, image=1, bbox=None, **extra):
    xs, ys = polygon[0::2], polygon[1::2]
    bbox = bbox or [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    return {"id": ann_id, "image_id": image, "category_id": category, "segmentation": [polygon],
            "bbox": bbox, "area": 1.0, "iscrowd": 0, **extra}


def test_malformed_annotations_are_skipped_counted_and_reported_once(tmp_path, caplog):
    square = [5, 5, 25, 5, 25, 20, 5, 20]
    rle = {"size": [30, 40], "counts": [30 * 10 + 2, 6, 24, 6, 24, 6, 30 * 40 - (30 * 10 + 2) - 66]}
    annotations = [
        polygon_annotation(1, square),                                      # fine: polygon, category 7
        {"id": 2, "image_id": 2, "category_id": 3, "segmentation": rle, "bbox": [10, 2, 3, 6],
         "area": 18, "iscrowd": 0},                                         # fine: uncompressed RLE
        polygon_annotation(3, square, bbox=[30, 5, 20, 10]),                 # box outside the image
        {**polygon_annotation(4, square), "segmentation": [[]]},            # empty polygon
        {**polygon_annotation(5, square), "segmentation": [[1, 2, 3, 4]]},  # two points: no polygon
        polygon_annotation(6, square, category=99),                         # unknown category
        polygon_annotation(7, [2, 2, 10, 2, 18, 2], bbox=[2, 2, 16, 1]),    # collinear: zero area
        polygon_annotation(8, square, image=42),                            # unknown image
        polygon_annotation(9, square, bbox=[5, 5, 0, 15]),                  # zero-width box
        polygon_annotation(10, square, image=2, iscrowd=1),                 # crowd: evaluation only
    ]
    with caplog.at_level(logging.WARNING, logger="models.data.coco"):
        data = CocoDataset(write_crafted(tmp_path, annotations))
        stream = list(data.dataset(training=True, seed=1).take(4).as_numpy_iterator())
        epochs = [stream[:2], stream[2:]]
    assert data.skipped == {"box outside image": 1, "empty polygon": 2, "unknown category": 1,
                            "zero area": 1, "unknown image": 1, "bad box": 1}
    assert data.crowd == 1
    warnings = [r for r in caplog.records if r.name == "models.data.coco"]
    assert len(warnings) == 1 and "skipped 7 malformed annotations" in warnings[0].getMessage()
    assert data.class_names == ["__background__", "dog", "cat"]       # ordered by category id 3, 7
    assert data.category_of_class == {1: 3, 2: 7}
    for elements in epochs:
        by_id = {int(e["image_id"][0]): e for e in elements}
        assert sorted(by_id) == [1, 2]
        np.testing.assert_array_equal(by_id[1]["class_ids"][0], [2])
        np.testing.assert_array_equal(by_id[2]["class_ids"][0], [1])     # the crowd one is not trained on
        assert by_id[2]["image"].shape[-1] == 3


def test_polygon_and_rle_segmentations_are_read(tmp_path):
    square = [5, 5, 25, 5, 25, 20, 5, 20]
    rle = {"size": [30, 40], "counts": [30 * 10 + 2, 6, 24, 6, 24, 6, 30 * 40 - (30 * 10 + 2) - 66]}
    data = CocoDataset(write_crafted(tmp_path, [
        polygon_annotation(1, square),
        {"id": 2, "image_id": 2, "category_id": 3, "segmentation": rle, "bbox": [10, 2, 3, 6], "area": 18,
         "iscrowd": 0}]))
    square_mask = data.coco.annToMask(data.coco.anns[1])
    assert abs(int(square_mask.sum()) - 20 * 15) <= 40                # pycocotools rasterises edges its own way
    assert square_mask[6:19, 6:24].all() and not square_mask[:4].any()
    example = data.example(1)
    np.testing.assert_array_equal(example["boxes"], [[5, 5, 25, 20]])
    assert example["masks"].shape == (1, MASK_SIZE, MASK_SIZE) and example["masks"][0, 4:-4, 4:-4].min() == 255
    stripes = data.coco.annToMask(data.coco.anns[2])
    assert stripes.sum() == 18 and stripes[2:8, 10:13].all()


def test_an_image_of_another_size_than_its_record_raises_naming_it(generated, tmp_path):
    write_dataset(tmp_path, images=1, seed=9, width=96, height=64, progress=False)
    data = CocoDataset(f"coco:{tmp_path / 'annotations.json'}:{generated / 'images'}")   # 96x64 label, 160x96 file
    with pytest.raises(DataError, match="000001.png: 160x96 pixels, the annotations say 96x64"):
        data.example(1)


def test_padded_batches_keep_true_sizes_and_mark_padding_with_class_zero(generated):
    data = CocoDataset(generated)
    batch = next(data.dataset(training=True, batch_size=3, seed=0,
                              augmentation=Augmentation(flip=False, short_side=(H * 0.5, H))).as_numpy_iterator())
    sizes = batch["image_size"]
    assert batch["image"].shape[1:3] == tuple(sizes.max(axis=0)) and len(set(map(tuple, sizes))) > 1
    for image, size, class_ids, boxes, masks in zip(batch["image"], sizes, batch["class_ids"], batch["boxes"],
                                                    batch["masks"]):
        assert not image[size[0]:].any() and not image[:, size[1]:].any()
        padding = class_ids == 0
        assert (~padding).sum() > 0 and not boxes[padding].any() and not masks[padding].any()
        assert (boxes[~padding][:, 2] <= size[1] + 1e-3).all()


def test_training_order_and_augmentation_follow_the_seed_and_change_every_epoch(generated):
    augmentation = Augmentation(flip=True, short_side=(H * 0.8, H * 1.2))

    def stream(data, start=0, count=6):
        return [(int(e["image_id"][0]), e["image"].shape, e["boxes"][0, 0].tolist())
                for e in data.dataset(training=True, seed=4, augmentation=augmentation, start=start)
                .take(count).as_numpy_iterator()]
    a, b = CocoDataset(generated), CocoDataset(generated)
    both = stream(a)
    first, second = both[:3], both[3:]
    assert both == stream(b)
    assert sorted(i for i, _, _ in first) == [1, 2, 3] and sorted(i for i, _, _ in second) == [1, 2, 3]
    assert second != first
    # A stream started later is the tail of the one started at 0 (what resuming a training run needs).
    assert stream(a, start=2, count=4) == both[2:]


def test_augment_is_the_resize_rule_then_the_flip(generated):
    """augment draws the short side, resizes by the model's rule, then flips with probability 1/2;
    the training input (models.training.batches) uses exactly this."""
    example, _ = one_example(CocoDataset(generated))
    augmentation = Augmentation(flip=True, short_side=(60.0, 90.0), max_size=130.0)
    flipped = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        short, flip = rng.uniform(60.0, 90.0), rng.random() < 0.5
        want = resize_example(example, resized_size(H, W, short, 130.0))
        want = flip_example(want) if flip else want
        got = augment(example, augmentation, np.random.default_rng(seed))
        assert max(got["image"].shape[:2]) <= 130 and 60 <= min(got["image"].shape[:2]) <= 90
        for key in ("image", "boxes", "masks", "image_size", "class_ids"):
            np.testing.assert_array_equal(got[key], want[key])
        flipped += flip
    assert 0 < flipped < 8
    unchanged = augment(example, Augmentation(flip=False), np.random.default_rng(0))
    np.testing.assert_array_equal(unchanged["image"], example["image"])


@pytest.mark.parametrize("make, problem", [
    (lambda root: root / "nowhere", "nowhere: no such data directory"),
    (lambda root: root, "no annotations.json"),
    (lambda root: (root / "annotations.json").write_text("{not json") and root, "not valid JSON (line 1"),
    (lambda root: (root / "annotations.json").write_text('{"images": []}') and root,
     "not a COCO instances file (no 'annotations' list)"),
    (lambda root: (root / "annotations.json").write_text("[1, 2]") and root, "not a COCO instances file"),
    (lambda root: (root / "annotations.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "gone.png", "width": 4, "height": 4}], "annotations": [],
         "categories": [{"id": 1, "name": "x"}]})) and root, "gone.png: image file missing"),
    (lambda root: "coco:" + str(root / "missing.json") + ":" + str(root), "missing.json: no such annotations file"),
    (lambda root: "coco:only-one-part", "expected coco:ANNOTATIONS_JSON:IMAGE_DIR"),
])
def test_unusable_inputs_raise_one_line_naming_them(tmp_path, make, problem):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError) as error:
        CocoDataset(make(tmp_path))
    assert problem in str(error.value) and "\n" not in str(error.value)

"""Write a torchvision Mask R-CNN reference (weights + outputs) for the TensorFlow parity tests.

Needs the optional torch extra; runs here, never in CI (CI reads the .npz it writes). Never import
tensorflow (or the `models` package, which does) in this process: torchvision after tensorflow crashes.

    python bench/torchvision_reference.py                              # ResNet-50, 800/1333 -> tests/data/tv_reference_r50.npz
    python bench/torchvision_reference.py --depth 18 --min-size 320 --max-size 576 \\
        --out tests/data/tv_reference_r18_320.npz                      # the small reference CI compares with
    python bench/torchvision_reference.py --save-pth /tmp/tv_r50.pth   # also the conditioned state dict for models.convert
    python bench/torchvision_reference.py --arch v2 --min-size 320 --max-size 576 \
        --out tests/data/tv_reference_v2_320.npz                       # maskrcnn_resnet50_fpn_v2, the CI reference
    python bench/torchvision_reference.py --arch v2                    # v2 at 800/1333 -> tests/data/tv_reference_v2_800.npz
                                                                       # (git-ignored: for bench/parity.py)

Steps: build torchvision's Mask R-CNN (--arch v1: MaskRCNN on `resnet_fpn_backbone(f"resnet{depth}")`,
frozen batch norm as in the COCO checkpoint; --arch v2: `maskrcnn_resnet50_fpn_v2(weights=None,
weights_backbone=None)`, BatchNorm2d in the ResNet-50, the FPN, the four-conv box head and the mask
head, a two-conv RPN head), load `make_state_dict(depth, num_classes, seed, arch)`
(models/tools/torchvision_weights.py), then condition the random weights so that their outputs are not
degenerate, stage by stage in forward order:
  1. every batch norm (FrozenBatchNorm2d or BatchNorm2d) of the backbone (ResNet body, and v2's FPN)
     gets the per-channel mean and variance of its own input on the test images, in forward order
     (one pass with forward pre-hooks: each layer sees inputs already normalised by the layers
     before it), so activations neither vanish nor explode;
  2. the RPN's two 1x1 predictors are scaled (weight and bias) so that over the test images the
     objectness logits have std 0.5 and the box deltas std 0.25: unscaled, the unnormalised FPN
     features give logits of +-50, whose sigmoids tie at exactly 1.0 in float32 (the proposals'
     order would then be arbitrary), and deltas of +-80 that throw most proposals off the image;
  3. v2: the box head's batch norms likewise, over the RoIAlign features of all the proposals;
  4. the class logits are spread: `roi_heads.box_predictor.cls_score.weight` is multiplied by the
     smallest factor of a geometric grid (1, sqrt 2, 2, ...) for which every image yields >= 50
     detections over the score threshold, all with distinct scores (1 when already so);
  5. v2: the mask head's batch norms likewise, over the RoIAlign features of the detections.
Then run torchvision at the requested sizes on all the images in one batched call and store, per
image, its detections.

The .npz holds: arch, seed, depth, num_classes, min_size, max_size, score_thresh, detections_per_img,
image_names; `override/<state-dict key>` for every value conditioning changed (so `make_state_dict(seed)`
+ overrides is exactly the state dict used: see `reference_state_dict`), and for
diagnosis the factors cls_score_scale, rpn_cls_logits_scale, rpn_bbox_pred_scale;
input_shape (the padded batch tensor, B 3 H W), image_sizes (resized, before padding, H W per image),
original_sizes; and per image NAME: NAME/boxes (N, 4) x1 y1 x2 y2 in original pixels, NAME/scores (N,),
NAME/labels (N,), NAME/mask_probs (N, 28, 28) (the mask head's per-class probability before pasting),
NAME/mask_counts (N,) COCO compressed RLE strings of the pasted masks thresholded at > 0.5.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
from detection_summary import print_summary  # noqa: E402  (bench/ is the script's directory)

from models.tools.torchvision_weights import ARCHES, OVERRIDE_PREFIX, make_state_dict, reference_state_dict  # noqa: E402

MIN_DETECTIONS = 50
RPN_OUTPUT_STDS = {"cls_logits": 0.5, "bbox_pred": 0.25}
CLS_SCALES = [2.0 ** (k / 2) for k in range(0, 25)]   # 1 .. 4096, steps of sqrt(2)
REFERENCE_LIMIT_BYTES = 5 * 2 ** 20
BATCH_NORMS = (torch.nn.BatchNorm2d, FrozenBatchNorm2d)


def build_model(arch: str, depth: int, num_classes: int, min_size: int, max_size: int,
                score_thresh: float = 0.05, detections_per_img: int = 100) -> MaskRCNN:
    """torchvision's Mask R-CNN in eval mode with its own random weights (nothing downloaded).

    arch v1: on a frozen-BN ResNet-`depth` FPN; v2: `maskrcnn_resnet50_fpn_v2` (depth must be 50).
    """
    heads = {"num_classes": num_classes, "min_size": min_size, "max_size": max_size,
             "box_score_thresh": score_thresh, "box_detections_per_img": detections_per_img}
    if arch == "v2":
        if depth != 50:
            raise SystemExit(f"--arch v2 is torchvision's ResNet-50 model only, got --depth {depth}")
        return maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, **heads).eval()
    backbone = resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=None, trainable_layers=3)
    return MaskRCNN(backbone, **heads).eval()


def load_numpy_state(model: MaskRCNN, state: dict[str, np.ndarray]) -> None:
    model.load_state_dict({key: torch.from_numpy(value) for key, value in state.items()}, strict=True)


def read_frames(paths: list[Path]) -> list[torch.Tensor]:
    """Images as float RGB CHW tensors in [0, 1], read with OpenCV like the pipeline reads frames."""
    frames = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"{path}: cannot read image")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        frames.append(torch.from_numpy(rgb).permute(2, 0, 1).float().div(255.0))
    return frames


@torch.no_grad()
def condition_batch_norms(stage: torch.nn.Module, run: Callable[[], object]) -> None:
    """Set the statistics of each batch norm inside `stage` to those of its input during `run()`.

    Forward pre-hooks, so in one pass each layer sees inputs already normalised by the layers
    before it (`run` is not called when `stage` has no batch norm).
    """
    def use_input_statistics(module, inputs):
        variance, mean = torch.var_mean(inputs[0], dim=(0, 2, 3), unbiased=False)
        module.running_mean.copy_(mean)
        module.running_var.copy_(variance)

    hooks = [m.register_forward_pre_hook(use_input_statistics)
             for m in stage.modules() if isinstance(m, BATCH_NORMS)]
    try:
        if hooks:
            run()
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def scale_rpn_predictors(model: MaskRCNN, frames: list[torch.Tensor]) -> dict[str, float]:
    """Scale the RPN head's 1x1 predictors so their outputs have the stds of RPN_OUTPUT_STDS."""
    batch, _ = model.transform(frames)
    objectness, deltas = model.rpn.head(list(model.backbone(batch.tensors).values()))
    scales = {}
    for name, outputs in (("cls_logits", objectness), ("bbox_pred", deltas)):
        layer = getattr(model.rpn.head, name)
        scales[name] = RPN_OUTPUT_STDS[name] / torch.cat([level.flatten() for level in outputs]).std().item()
        layer.weight.mul_(scales[name])
        layer.bias.mul_(scales[name])
    return scales


@torch.no_grad()
def box_head_features(model: MaskRCNN, frames: list[torch.Tensor]):
    """The box head's output for every proposal: (features (R, fc_dim), proposals, image_sizes)."""
    batch, _ = model.transform(frames)
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(batch, features)
    pooled = model.roi_heads.box_roi_pool(features, proposals, batch.image_sizes)
    return model.roi_heads.box_head(pooled), proposals, batch.image_sizes


def detections_are_spread(scores_per_image: list[torch.Tensor]) -> bool:
    """True when every image has >= MIN_DETECTIONS detections and no two of its scores are equal."""
    return all(len(s) >= MIN_DETECTIONS and len(torch.unique(s)) == len(s) for s in scores_per_image)


@torch.no_grad()
def spread_class_logits(model: MaskRCNN, frames: list[torch.Tensor]) -> float:
    """Scale the classifier weights by the smallest factor giving spread detections; return it."""
    features, proposals, image_sizes = box_head_features(model, frames)
    predictor, heads = model.roi_heads.box_predictor, model.roi_heads
    box_regression = predictor.bbox_pred(features)
    for scale in CLS_SCALES:
        logits = torch.nn.functional.linear(features, predictor.cls_score.weight * scale, predictor.cls_score.bias)
        _, scores, _ = heads.postprocess_detections(logits, box_regression, proposals, image_sizes)
        if detections_are_spread(scores):
            predictor.cls_score.weight.mul_(scale)
            return scale
    raise SystemExit(f"no classifier scale up to {CLS_SCALES[-1]} gives >= {MIN_DETECTIONS} detections per image")


@torch.no_grad()
def condition(model: MaskRCNN, frames: list[torch.Tensor]) -> dict[str, float]:
    """Steps 1-5 of the module docstring; returns the scale factors it applied."""
    batch, _ = model.transform(frames)
    condition_batch_norms(model.backbone, lambda: model.backbone(batch.tensors))
    rpn_scales = scale_rpn_predictors(model, frames)
    condition_batch_norms(model.roi_heads.box_head, lambda: box_head_features(model, frames))
    cls_scale = spread_class_logits(model, frames)
    condition_batch_norms(model.roi_heads.mask_head, lambda: model(frames))
    return {"cls_score_scale": cls_scale, "rpn_cls_logits_scale": rpn_scales["cls_logits"],
            "rpn_bbox_pred_scale": rpn_scales["bbox_pred"]}


def changed_entries(model: MaskRCNN, original: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """State-dict entries of the model that differ from the seeded weights."""
    return {key: value.numpy().copy() for key, value in model.state_dict().items()
            if not np.array_equal(value.numpy(), original[key])}


def encode_masks(masks: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) pasted mask probabilities -> (N,) COCO compressed RLE strings of mask > 0.5."""
    binary = np.asfortranarray((masks[:, 0] > 0.5).numpy().transpose(1, 2, 0).astype(np.uint8))
    return np.array([rle["counts"].decode("ascii") for rle in mask_utils.encode(binary)], dtype=str)


@torch.no_grad()
def run_reference(model: MaskRCNN, frames: list[torch.Tensor]) -> tuple[list[dict], dict]:
    """torchvision's detections per frame plus the mask head's 28x28 probabilities and input geometry."""
    captured = {}

    def keep_roi_heads_output(module, inputs, output):
        captured["mask_probs"] = [r["masks"][:, 0].clone() for r in output[0]]

    def keep_transform_output(module, inputs, output):
        captured["input_shape"] = tuple(output[0].tensors.shape)
        captured["image_sizes"] = [tuple(size) for size in output[0].image_sizes]

    hooks = [model.roi_heads.register_forward_hook(keep_roi_heads_output),
             model.transform.register_forward_hook(keep_transform_output)]
    try:
        outputs = model(frames)
    finally:
        for hook in hooks:
            hook.remove()
    detections = [{"boxes": out["boxes"].numpy(), "scores": out["scores"].numpy(),
                   "labels": out["labels"].numpy(), "mask_probs": probs.numpy(),
                   "mask_counts": encode_masks(out["masks"])}
                  for out, probs in zip(outputs, captured["mask_probs"])]
    geometry = {"input_shape": np.array(captured["input_shape"]), "image_sizes": np.array(captured["image_sizes"]),
                "original_sizes": np.array([tuple(f.shape[-2:]) for f in frames])}
    return detections, geometry


def write_reference(path: Path, settings: dict, names: list[str], overrides: dict, detections: list[dict],
                    geometry: dict) -> None:
    arrays = {**{k: np.array(v) for k, v in settings.items()}, "image_names": np.array(names), **geometry}
    arrays.update({OVERRIDE_PREFIX + key: value for key, value in overrides.items()})
    for name, d in zip(names, detections):
        arrays.update({f"{name}/{field}": value for field, value in d.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    size = path.stat().st_size
    print(f"wrote {path} ({size} bytes, {len(overrides)} overridden state-dict entries)")
    if size > REFERENCE_LIMIT_BYTES:
        raise SystemExit(f"{path}: {size} bytes is over the {REFERENCE_LIMIT_BYTES} byte limit")


def check_round_trip(path: Path, model: MaskRCNN) -> None:
    """The file's seed + overrides must rebuild exactly the state dict torchvision ran with."""
    rebuilt = reference_state_dict(path)
    for key, value in model.state_dict().items():
        if not np.array_equal(rebuilt[key], value.numpy()):
            raise SystemExit(f"{path}: seed + overrides do not rebuild {key}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="v1", choices=ARCHES,
                        help="v1: maskrcnn_resnet50_fpn's architecture (any depth); v2: maskrcnn_resnet50_fpn_v2")
    parser.add_argument("--depth", type=int, default=50, choices=[18, 34, 50, 101])
    parser.add_argument("--num-classes", type=int, default=91)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--images", nargs="+", default=["highway_1.jpg", "highway_2.jpg", "highway_3.jpg"],
                        help="file names in ../shared/data (or paths)")
    parser.add_argument("--out", type=Path, help="default tests/data/tv_reference_r50.npz (v1), "
                        "tests/data/tv_reference_v2_MINSIZE.npz (v2)")
    parser.add_argument("--save-pth", type=Path, help="also torch.save the conditioned state dict here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    paths = [Path(p) if Path(p).exists() else DATA / p for p in args.images]
    names = [p.stem for p in paths]
    frames = read_frames(paths)
    out = args.out or ROOT / "tests" / "data" / (
        "tv_reference_r50.npz" if args.arch == "v1" else f"tv_reference_v2_{args.min_size}.npz")
    model = build_model(args.arch, args.depth, args.num_classes, args.min_size, args.max_size)
    seeded = make_state_dict(args.depth, args.num_classes, args.seed, args.arch)
    load_numpy_state(model, seeded)

    scales = condition(model, frames)
    print(f"RPN objectness scaled by {scales['rpn_cls_logits_scale']:.4f}, RPN deltas by "
          f"{scales['rpn_bbox_pred_scale']:.4f}, classifier weights by {scales['cls_score_scale']:.3f}")
    detections, geometry = run_reference(model, frames)
    print_summary(names, [d["scores"] for d in detections], [d["labels"] for d in detections],
                  [d["mask_probs"] for d in detections])
    if not detections_are_spread([torch.from_numpy(d["scores"]) for d in detections]):
        raise SystemExit("the full model run does not give spread detections on every image")

    settings = {"arch": args.arch, "seed": args.seed, "depth": args.depth, "num_classes": args.num_classes,
                "min_size": args.min_size, "max_size": args.max_size,
                "score_thresh": model.roi_heads.score_thresh,
                "detections_per_img": model.roi_heads.detections_per_img, **scales}
    write_reference(out, settings, names, changed_entries(model, seeded), detections, geometry)
    check_round_trip(out, model)
    if args.save_pth:
        torch.save(model.state_dict(), args.save_pth)
        print(f"wrote {args.save_pth}")


if __name__ == "__main__":
    main()

"""Parity report: the TensorFlow model against the recorded outputs of torchvision (v1, v2) and of the
seed's own Keras graph, per image.

    python bench/parity.py                # the references in tests/data; writes bench/results/parity.json
    python bench/parity.py --seed-full    # and the seed's ResNet-101 at 1024 (see seed_full)

--seed-full regenerates the seed's full reference with bench/seed_reference.py --preset full (tf-keras, in
its own process, 10-20 minutes) in a temporary folder, converts its .h5 as `maskstream convert keras` does,
compares, and writes bench/results/parity_seed_full.json.

The same comparison as the parity tests (models.tools.parity.compare_reference), reported as numbers:
detections matched one to one (same class, box IoU >= 0.99), the largest score difference, the largest
box coordinate difference, the smallest mask IoU over matched pairs whose masks are not empty, the seed's
whole-pixel boxes matched as one pixel off where the reference rounded from within 0.05 px of a half
pixel (`rounding_flips`), and the masks that agree only when pasted into the reference's box (a box a few
thousandths of a pixel away, across the integer the paste truncates or rounds it to: `paste_flips`).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import models  # noqa: E402
from models.mask_rcnn import MaskRCNN  # noqa: E402
from models.tools.convert import convert_state_dict  # noqa: E402
from models.tools.parity import (  # noqa: E402
    LARGE_MASK_PIXELS,
    compare_reference,
    read_reference_frames,
)
from models.tools.torchvision_weights import reference_state_dict  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
TORCHVISION_REFERENCES = {"tv_reference_r50.npz": "coco_r50_fpn.yaml", "tv_reference_r18_320.npz": "coco_r50_fpn.yaml",
                          "tv_reference_v2_320.npz": "coco_r50_fpn_v2.yaml"}
SEED_REFERENCE = ROOT / "tests" / "data" / "seed_reference_r50w8_512.npz"


def torchvision_model(path: Path, config_name: str) -> MaskRCNN:
    """The configuration at the reference's sizes and score threshold, with its state dict converted."""
    ref = np.load(path)
    config = models.load_config(ROOT / "configs" / config_name)
    config.backbone.depth = int(ref["depth"])
    config.input.min_size, config.input.max_size = int(ref["min_size"]), int(ref["max_size"])
    config.box_head.score_threshold = float(ref["score_thresh"])
    return MaskRCNN(config, convert_state_dict(reference_state_dict(path), config, path.name))


def seed_model(npz: Path, weights: Path) -> MaskRCNN:
    """The seed's reference .h5 converted as `maskstream convert keras` does, at the reference's settings."""
    from models.tools.seed_weights import convert_seed_h5, reference_settings

    config, params = convert_seed_h5(weights)
    reference_settings(config, np.load(npz))
    return MaskRCNN(config, params)


def report(model: MaskRCNN, path: Path) -> dict:
    ref = np.load(path)
    result = {}
    for name, parity in compare_reference(model, ref, read_reference_frames(ref, DATA)).items():
        ious = [m.iou for m in parity.masks if m.union]
        result[name] = {
            "reference_detections": parity.reference, "our_detections": parity.ours, "matched": len(parity.pairs),
            "max_score_difference": max(parity.score_differences),
            "max_box_difference_px": max(parity.box_differences_px),
            "min_mask_iou": min(ious), "mean_mask_iou": float(np.mean(ious)), "non_empty_masks": len(ious),
            "differing_mask_pixels": sum(m.differing for m in parity.masks),
            "mask_failures": parity.mask_failures(), "paste_flips": len(parity.paste_flips()),
            "rounding_flips": len(parity.rounding_flips), "lowest_iou_mask": lowest_iou_mask(parity)}
    return result


def lowest_iou_mask(parity) -> dict:
    """The matched pair with the lowest mask IoU: its union in pixels (under LARGE_MASK_PIXELS the comparison
    counts differing pixels instead), the pixels that differ, and whether it is a paste flip (agrees pasted into
    the reference's box) or a rounding flip (a box rounded to the other whole pixel)."""
    k = min((k for k, m in enumerate(parity.masks) if m.union), key=lambda k: parity.masks[k].iou)
    i, m = parity.pairs[k][0], parity.masks[k]
    return {"iou": m.iou, "union_pixels": m.union, "differing_pixels": m.differing, "compared_by_iou":
            m.union >= LARGE_MASK_PIXELS, "paste_flip": i in parity.paste_flips(),
            "rounding_flip": i in parity.rounding_flips,
            "iou_in_reference_box": None if m.in_reference_box is None else m.in_reference_box.iou}


def print_table(results: dict) -> None:
    print(f"{'reference':32s} {'image':22s} {'matched':>9s} {'max |dscore|':>12s} {'max |dbox| px':>13s} "
          f"{'min mask IoU':>12s} {'mean mask IoU':>13s} {'rounded':>7s} {'pasted':>6s} {'fails':>5s}")
    for reference, images in results.items():
        for name, r in images.items():
            print(f"{reference:32s} {name:22s} {r['matched']:>4d}/{r['reference_detections']:<4d} "
                  f"{r['max_score_difference']:12.2e} {r['max_box_difference_px']:13.4f} {r['min_mask_iou']:12.4f} "
                  f"{r['mean_mask_iou']:13.4f} {r['rounding_flips']:7d} {r['paste_flips']:6d} "
                  f"{len(r['mask_failures']):5d}")


def seed_full() -> dict:
    """Regenerate the seed's ResNet-101 1024 reference in a temporary folder and compare with it."""
    with tempfile.TemporaryDirectory(prefix="seed_full_") as folder:
        out = Path(folder) / "seed_reference_r101_1024"
        subprocess.run([sys.executable, str(ROOT / "bench" / "seed_reference.py"), "--preset", "full",
                        "--out", str(out)], check=True, cwd=ROOT / "bench")
        npz = out.with_suffix(".npz")
        model = seed_model(npz, out.with_suffix(".h5"))
        ref = np.load(npz)
        return {"seed_reference_r101_1024": report(model, npz),
                "settings": {k: ref[k].tolist() for k in ref.files if k.startswith("config/")},
                "versions": str(ref["versions"])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed-full", action="store_true", help="also regenerate and compare the seed's ResNet-101 "
                        "at 1024 (needs the seed extra: tf-keras, scikit-image)")
    args = parser.parse_args(argv)
    results = {name: report(torchvision_model(ROOT / "tests" / "data" / name, config), ROOT / "tests" / "data" / name)
               for name, config in TORCHVISION_REFERENCES.items()}
    results[SEED_REFERENCE.name] = report(seed_model(SEED_REFERENCE, SEED_REFERENCE.with_suffix(".h5")), SEED_REFERENCE)
    print_table(results)
    out = ROOT / "bench" / "results" / "parity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    if args.seed_full:
        full = seed_full()
        print_table({k: v for k, v in full.items() if k == "seed_reference_r101_1024"})
        (ROOT / "bench" / "results" / "parity_seed_full.json").write_text(json.dumps(full, indent=2))


if __name__ == "__main__":
    main()

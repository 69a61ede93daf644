"""Weight import from torchvision's Mask R-CNN (and, with `keras`, the seed's: models/tools/seed_weights.py).

    python -m models.tools.convert torchvision SRC.pth DST.npz [--config configs/coco_r50_fpn.yaml]
    python -m models.tools.convert keras WEIGHTS.h5 DST.npz [--classes FILE] [--config configs/seed_r101_coco.yaml]

SRC is what `torch.save(model.state_dict(), SRC)` writes for torchvision's
`maskrcnn_resnet50_fpn` or a Mask R-CNN on `resnet_fpn_backbone` of depth 18, 34, 50 or 101
(both the current key names and the older ones of the published COCO checkpoint are read), or
for `maskrcnn_resnet50_fpn_v2` (recognised by its keys: its box head starts with a conv; converted
into configs/coco_r50_fpn_v2.yaml). Batch norms (frozen, or v2's BatchNorm2d after the FPN's, the
box head's and the mask head's convs, picked by the keys present) are folded into the preceding
convolutions; conv kernels go from OIHW to HWIO; the first FC layer is permuted from torch's
(C, H, W) flattening to TensorFlow's (H, W, C).

Only reading SRC needs torch (`pip install -e ".[torch]"`); `convert_state_dict` works on any
mapping of numpy arrays. A state dict of another architecture fails with one line naming the
first missing or mis-shaped key. The .npz records the configuration it was converted with.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..backbone import is_bottleneck, residual_blocks
from ..config import RESNET_BLOCKS, ModelConfig, load_config
from ..errors import ConversionError, command
from ..rpn import rpn_conv_name
from ..weights import first_mismatch, save_weights

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# torchvision's architectures and the configuration each converts into by default.
TORCHVISION_CONFIGS = {"v1": CONFIGS / "coco_r50_fpn.yaml", "v2": CONFIGS / "coco_r50_fpn_v2.yaml"}


class _Reader:
    """Looks up torchvision keys (trying older aliases) and checks their shapes."""

    def __init__(self, state: Mapping[str, np.ndarray], source: str):
        self.state = state
        self.source = source
        self.used: set[str] = set()

    def get(self, keys: list[str], shape: tuple) -> np.ndarray:
        for key in keys:
            if key in self.state:
                value = np.asarray(self.state[key], dtype=np.float32)
                if tuple(value.shape) != tuple(shape):
                    raise ConversionError(f"{self.source}: {key} has shape {tuple(value.shape)}, "
                                          f"the configuration needs {tuple(shape)}")
                self.used.add(key)
                return value
        raise ConversionError(f"{self.source}: missing key {keys[0]}: not a Mask R-CNN of the configured "
                              "architecture")


def _conv_bn(r: _Reader, conv_key: str, bn_key: str, k: int, cin: int, cout: int, eps: float):
    """A conv without bias followed by a frozen batch norm -> folded HWIO kernel and bias."""
    weight = r.get([f"{conv_key}.weight"], (cout, cin, k, k))
    gamma = r.get([f"{bn_key}.weight"], (cout,))
    beta = r.get([f"{bn_key}.bias"], (cout,))
    mean = r.get([f"{bn_key}.running_mean"], (cout,))
    var = r.get([f"{bn_key}.running_var"], (cout,))
    scale = gamma / np.sqrt(var + np.float32(eps))
    kernel = weight.transpose(2, 3, 1, 0) * scale
    return kernel.astype(np.float32), (beta - mean * scale).astype(np.float32)


def _conv_maybe_bn(r: _Reader, key: str, k: int, cin: int, cout: int, eps: float):
    """torchvision's `key.0` conv: with a batch norm `key.1` after it (v2's FPN) folded in, else with its bias
    (v1; the published checkpoint's older name is `key` itself)."""
    if f"{key}.1.weight" in r.state:
        return _conv_bn(r, f"{key}.0", f"{key}.1", k, cin, cout, eps)
    return _conv(r, [f"{key}.0", key], k, cin, cout)


def _conv(r: _Reader, keys: list[str], k: int, cin: int, cout: int):
    weight = r.get([f"{key}.weight" for key in keys], (cout, cin, k, k))
    bias = r.get([f"{key}.bias" for key in keys], (cout,))
    return weight.transpose(2, 3, 1, 0), bias


def _dense(r: _Reader, key: str, cin: int, cout: int):
    return r.get([f"{key}.weight"], (cout, cin)).T, r.get([f"{key}.bias"], (cout,))


def convert_state_dict(state: Mapping[str, np.ndarray], config: ModelConfig, source: str = "state dict"
                       ) -> dict[str, np.ndarray]:
    """torchvision Mask R-CNN state dict (key -> array) -> this project's parameters."""
    from ..mask_rcnn import param_shapes  # the full architecture, to check the result against

    r = _Reader(state, source)
    out: dict[str, np.ndarray] = {}

    def put(name, pair):
        out[f"{name}/kernel"], out[f"{name}/bias"] = pair

    bb = config.backbone
    eps = bb.frozen_bn_eps
    body = "backbone.body"
    put("backbone/conv1", _conv_bn(r, f"{body}.conv1", f"{body}.bn1", 7, 3, bb.width, eps))
    bottleneck = is_bottleneck(bb.depth)
    convs = ([("conv1", 1, "in", "planes"), ("conv2", 3, "planes", "planes"), ("conv3", 1, "planes", "out")]
             if bottleneck else [("conv1", 3, "in", "planes"), ("conv2", 3, "planes", "planes")])
    for name, cin, planes, _, downsample in residual_blocks(bb):
        _, layer, index = name.split("/")
        prefix = f"{body}.{layer}.{index}"
        dims = {"in": cin, "planes": planes, "out": planes * (4 if bottleneck else 1)}
        for conv, k, a, b in convs:
            put(f"{name}/{conv}", _conv_bn(r, f"{prefix}.{conv}", f"{prefix}.bn{conv[-1]}", k, dims[a], dims[b], eps))
        if downsample:
            put(f"{name}/downsample", _conv_bn(r, f"{prefix}.downsample.0", f"{prefix}.downsample.1", 1, cin,
                                                dims["out"], eps))

    c = config.fpn.channels
    stage_in = [bb.width * m * (4 if bottleneck else 1) for m in (1, 2, 4, 8)]
    for i, cin in enumerate(stage_in):
        put(f"fpn/inner{i}", _conv_maybe_bn(r, f"backbone.fpn.inner_blocks.{i}", 1, cin, c, eps))
        put(f"fpn/layer{i}", _conv_maybe_bn(r, f"backbone.fpn.layer_blocks.{i}", 3, c, c, eps))

    a = len(config.anchors.aspect_ratios)
    hidden = config.rpn.conv_channels or c
    for i in range(config.rpn.conv_depth):
        aliases = [f"rpn.head.conv.{i}.0"] + (["rpn.head.conv"] if i == 0 else [])
        put(rpn_conv_name(i), _conv(r, aliases, 3, c if i == 0 else hidden, hidden))
    put("rpn/objectness", _conv(r, ["rpn.head.cls_logits"], 1, hidden, a))
    put("rpn/deltas", _conv(r, ["rpn.head.bbox_pred"], 1, hidden, 4 * a))

    s = config.roi_align.box_output_size
    bh = config.box_head
    fc, k = bh.fc_dim, config.num_classes
    cin = c
    for i, dim in enumerate(bh.conv_dims):     # v2's FastRCNNConvFCHead: Conv2dNormActivation x 4, Flatten, Linear
        put(f"box_head/conv{i + 1}", _conv_bn(r, f"roi_heads.box_head.{i}.0", f"roi_heads.box_head.{i}.1", 3, cin, dim,
                                              eps))
        cin = dim
    fc_keys = ([f"roi_heads.box_head.{len(bh.conv_dims) + 1}"] if bh.conv_dims else
               [f"roi_heads.box_head.fc{6 + i}" for i in range(bh.fc_layers)])
    if len(fc_keys) != bh.fc_layers:
        raise ConversionError(f"{source}: torchvision's box head with convs has one FC layer, the configuration "
                              f"has box_head.fc_layers {bh.fc_layers}")
    w6, b6 = _dense(r, fc_keys[0], cin * s * s, fc)
    # torch flattens pooled features as (C, S, S); ours are (S, S, C).
    out["box_head/fc6/kernel"] = w6.reshape(cin, s, s, fc).transpose(1, 2, 0, 3).reshape(s * s * cin, fc)
    out["box_head/fc6/bias"] = b6
    for i, key in enumerate(fc_keys[1:], start=7):
        put(f"box_head/fc{i}", _dense(r, key, fc, fc))
    put("box_head/cls_score", _dense(r, "roi_heads.box_predictor.cls_score", fc, k))
    put("box_head/bbox_pred", _dense(r, "roi_heads.box_predictor.bbox_pred", fc, 4 * k))

    cin = c
    for i, dim in enumerate(config.mask_head.conv_dims):
        if f"roi_heads.mask_head.{i}.1.weight" in state:       # v2: conv, then BatchNorm2d
            pair = _conv_bn(r, f"roi_heads.mask_head.{i}.0", f"roi_heads.mask_head.{i}.1", 3, cin, dim, eps)
        else:
            pair = _conv(r, [f"roi_heads.mask_head.{i}.0", f"roi_heads.mask_head.mask_fcn{i + 1}"], 3, cin, dim)
        put(f"mask_head/fcn{i + 1}", pair)
        cin = dim
    deconv = r.get(["roi_heads.mask_predictor.conv5_mask.weight"], (cin, cin, 2, 2))
    out["mask_head/deconv/kernel"] = deconv.transpose(2, 3, 1, 0)   # (in, out, kh, kw) -> (kh, kw, out, in)
    out["mask_head/deconv/bias"] = r.get(["roi_heads.mask_predictor.conv5_mask.bias"], (cin,))
    put("mask_head/logits", _conv(r, ["roi_heads.mask_predictor.mask_fcn_logits"], 1, cin, k))

    unused = sorted(key for key in state if key not in r.used and not key.endswith("num_batches_tracked"))
    if unused:
        raise ConversionError(f"{source}: unexpected key {unused[0]} (and {len(unused) - 1} more): not a Mask R-CNN "
                              "of the configured architecture")
    out = {name: np.ascontiguousarray(v, dtype=np.float32) for name, v in out.items()}
    problem = first_mismatch(out, param_shapes(config))
    if problem:
        raise ConversionError(f"{source}: {problem} (there: the converted state dict, here: the configuration)")
    return out


def torchvision_arch(state: Mapping[str, np.ndarray]) -> str:
    """"v2" for a `maskrcnn_resnet50_fpn_v2` state dict (its box head starts with a conv,
    roi_heads.box_head.0.0), else "v1"."""
    return "v2" if "roi_heads.box_head.0.0.weight" in state else "v1"


def infer_depth(state: Mapping[str, np.ndarray]) -> int | None:
    """The ResNet depth of a torchvision state dict, from its block counts and block type."""
    counts = tuple(len({k.split(".")[3] for k in state if k.startswith(f"backbone.body.layer{i}.")})
                   for i in range(1, 5))
    bottleneck = any(".conv3." in k for k in state if k.startswith("backbone.body.layer1."))
    for depth, blocks in RESNET_BLOCKS.items():
        if blocks == counts and is_bottleneck(depth) == bottleneck:
            return depth
    return None


def read_torch_state_dict(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ConversionError('reading a .pth needs torch: pip install -e ".[torch]"') from None
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not a checkpoint
        raise ConversionError(f"{path}: not a torch state dict ({type(e).__name__})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: not a state dict (a {type(state).__name__})")
    return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maskstream convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("format", choices=["torchvision", "keras"],
                        help="torchvision: a Mask R-CNN state dict (.pth); keras: the seed's or matterport's Keras 2 "
                             "weights (.h5, written by save_weights or ModelCheckpoint)")
    parser.add_argument("src", type=Path, help="the weights to convert (.pth or .h5)")
    parser.add_argument("dst", type=Path, help="output weights file (.npz)")
    parser.add_argument("--config", help="model config the weights are for (torchvision: configs/coco_r50_fpn.yaml, "
                        "or configs/coco_r50_fpn_v2.yaml for a maskrcnn_resnet50_fpn_v2 state dict, recognised by "
                        "its keys; keras: configs/seed_r50_coco.yaml or seed_r101_coco.yaml by the depth); the "
                        "depth, widths and class count are taken from the weights")
    parser.add_argument("--classes", type=Path, help="keras: class names, one per line without the background "
                        "(the seed's model_data/*_classes.txt); default COCO's when the weights have 81 classes")
    args = parser.parse_args(argv)
    if args.format == "keras":
        return convert_keras(args.src, args.dst, args.classes, args.config)
    if args.classes is not None:
        parser.error("--classes is for keras weights (torchvision's class names come from --config)")
    from ..mask_rcnn import weights_record

    state = read_torch_state_dict(args.src)
    config = load_config(args.config or TORCHVISION_CONFIGS[torchvision_arch(state)])
    depth = infer_depth(state)
    if depth is not None:
        config.backbone.depth = depth
    key = "roi_heads.box_predictor.cls_score.bias"
    if key in state and state[key].shape[0] != config.num_classes:
        n = state[key].shape[0]
        config.class_names = list(config.class_names[:n]) + [f"class_{i}" for i in range(len(config.class_names), n)]
    params = convert_state_dict(state, config, str(args.src))
    path = save_weights(args.dst, params, weights_record(config, "conversion"))
    print(f"wrote {path}: ResNet-{config.backbone.depth} FPN, {config.num_classes} classes, {len(params)} tensors")
    return 0


def convert_keras(src: Path, dst: Path, classes: Path | None, config_path: str | None) -> int:
    """`maskstream convert keras`: the .npz, and beside it DST.yaml when the weights' configuration is not
    the shipped one (other classes or widths), so that `load_model(DST.yaml, weights=DST.npz)` fits."""
    import yaml

    from ..mask_rcnn import weights_record
    from .seed_weights import convert_seed_h5

    config, params = convert_seed_h5(src, classes, config_path)
    shipped = load_config(config.source)
    if config.to_dict() != shipped.to_dict():
        config.source = str(Path(dst).with_suffix(".yaml"))
        Path(config.source).parent.mkdir(parents=True, exist_ok=True)
        Path(config.source).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    path = save_weights(dst, params, weights_record(config, "conversion"))
    print(f"wrote {path}: the seed's ResNet-{config.backbone.depth} (width {config.backbone.width}), "
          f"{config.num_classes} classes, {len(params)} tensors; its configuration: {config.source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reading Keras 2 HDF5 weights files with h5py alone (no TensorFlow, no Keras), and the seed's
Mask R-CNN layers in them.

The seed's code and matterport's Mask_RCNN (whose graph and layer names the seed shares) write their
weights with Keras 2's `model.save_weights("X.h5")` or `ModelCheckpoint(save_weights_only=True)`; a
whole-model `model.save("X.h5")` holds the same layout in its `model_weights` group. The layout:

    file (or model_weights) attrs: layer_names = the model's layers in order (Keras splits a long list
        into layer_names0, layer_names1, ...), backend, keras_version
    one group per layer, attr weight_names = dataset paths relative to the group, "<layer>/<weight>:0":
        conv1          conv1/kernel:0 (7, 7, 3, 64), conv1/bias:0
        bn_conv1       bn_conv1/gamma:0, bn_conv1/beta:0, bn_conv1/moving_mean:0, bn_conv1/moving_variance:0
        rpn_model      rpn_conv_shared/kernel:0, ..., rpn_class_raw/..., rpn_bbox_pred/...  (a nested model:
                       one group holding the weights of its layers)
        mrcnn_mask_bn1 mrcnn_mask_bn1/gamma:0, ...  (a TimeDistributed wrapper keeps the wrapper's name)
    layers without weights have an empty weight_names.

`read_keras_h5(path)` returns {layer name: {weight name: array}}: weight names without their ":0"
suffix (kernel, bias, gamma, beta, moving_mean, moving_variance), in the file's order. A plain layer
and a TimeDistributed wrapper are keyed by their group (the layer's name in the model); a group
whose weights belong to several layers (a nested model such as `rpn_model`) is flattened into those
layers, keyed by the layer part of each weight path. Kernels keep Keras's layouts: Conv2D (kh, kw,
in, out), Conv2DTranspose (kh, kw, out, in), Dense (in, out).

`infer_seed_architecture(weights)` reads the seed model's hyper-parameters from the shapes and the
layers present, `seed_weight_shapes(arch)` lists every weight the seed's predict graph has, and
`check_seed_weights` names the first one that is missing or mis-shaped.

Every failure is a ConversionError: one line naming the file and the problem (a file that is not
HDF5, an HDF5 file without weights, a Keras 3 `.weights.h5`, a TensorFlow checkpoint, a file of
another architecture).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import ConversionError

BATCH_NORM_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
CHECKPOINT_DATA = re.compile(r"\.data-\d{5}-of-\d{5}$")
IDENTITY_BLOCKS_STAGE4 = {50: 5, 101: 22}   # res4b.. : 5 blocks in ResNet-50 (b..f), 22 in ResNet-101 (b..w)

Weights = dict[str, dict[str, np.ndarray]]


# ----------------------------------------------------------------------------------------------------
# The HDF5 layout
# ----------------------------------------------------------------------------------------------------

def _checkpoint_prefix(path: Path) -> Path | None:
    """The prefix of a TensorFlow checkpoint that `path` names (its .index, a .data-* shard, or the prefix)."""
    if path.name.endswith(".index"):
        return path.with_name(path.name[:-len(".index")])
    match = CHECKPOINT_DATA.search(path.name)
    if match:
        return path.with_name(path.name[:match.start()])
    if not path.exists() and path.with_name(path.name + ".index").is_file():
        return path
    return None


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _attr_list(node, name: str) -> list[str] | None:
    """A string-list attribute, joining the chunks (name0, name1, ...) Keras writes for long lists."""
    if name in node.attrs:
        return [_text(v) for v in np.atleast_1d(node.attrs[name])]
    if f"{name}0" not in node.attrs:
        return None
    values, chunk = [], 0
    while f"{name}{chunk}" in node.attrs:
        values += [_text(v) for v in np.atleast_1d(node.attrs[f"{name}{chunk}"])]
        chunk += 1
    return values


def _weights_root(f: h5py.File, source: str):
    """The group that holds layer_names: the file itself, or model_weights of a whole-model save."""
    if _attr_list(f, "layer_names") is not None:
        return f
    if "model_weights" in f and _attr_list(f["model_weights"], "layer_names") is not None:
        return f["model_weights"]
    if isinstance(f.get("layers"), h5py.Group) or isinstance(f.get("vars"), h5py.Group):
        raise ConversionError(f"{source}: a Keras 3 weights file (layers/.../vars layout), not the Keras 2 "
                                "HDF5 layout that the seed's and matterport's save_weights write")
    if "model_config" in f.attrs:
        raise ConversionError(f"{source}: an HDF5 file with a Keras model config but no weights")
    raise ConversionError(f"{source}: an HDF5 file without Keras weights (no layer_names attribute)")


def _read_layers(root, source: str) -> Weights:
    weights: Weights = {}
    for layer in _attr_list(root, "layer_names"):
        if layer not in root:
            raise ConversionError(f"{source}: layer {layer} is listed in layer_names but has no group")
        group = root[layer]
        names = _attr_list(group, "weight_names") or []
        by_owner: dict[str, dict[str, np.ndarray]] = {}
        for name in names:
            if name not in group or not isinstance(group[name], h5py.Dataset):
                raise ConversionError(f"{source}: layer {layer} lists weight {name} but has no such dataset")
            parts = name.split("/")
            owner = parts[-2] if len(parts) > 1 else layer
            by_owner.setdefault(owner, {})[parts[-1].split(":")[0]] = np.asarray(group[name][()])
        if len(by_owner) == 1:      # a plain layer or a wrapper: its name in the model
            by_owner = {layer: next(iter(by_owner.values()))}
        for owner, values in by_owner.items():
            if owner in weights:
                raise ConversionError(f"{source}: two layers named {owner}")
            weights[owner] = values
    if not weights:
        raise ConversionError(f"{source}: a Keras weights file with no weights in it")
    return weights


def read_keras_h5(path: str | Path) -> Weights:
    """{layer name: {weight name: array}} from a Keras 2 HDF5 weights file (see the module docstring)."""
    path = Path(path)
    prefix = _checkpoint_prefix(path)
    if prefix is not None:
        raise ConversionError(f"{path}: a TensorFlow checkpoint ({prefix.name}.index + .data-*), not a Keras 2 "
                                ".h5 weights file")
    if path.is_dir():
        raise ConversionError(f"{path}: a directory, not a Keras 2 .h5 weights file")
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise ConversionError(f"{path}: not an HDF5 file (expected Keras 2 .h5 weights)")
    try:
        with h5py.File(path, "r") as f:
            return _read_layers(_weights_root(f, str(path)), str(path))
    except OSError as e:
        raise ConversionError(f"{path}: unreadable HDF5 file ({e})") from None


# ----------------------------------------------------------------------------------------------------
# The seed's Mask R-CNN in those files
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SeedArchitecture:
    """The hyper-parameters of a seed (matterport) Mask R-CNN, as its weights' shapes give them."""
    depth: int                  # ResNet 50 or 101 (config BACKBONE)
    num_classes: int            # NUM_CLASSES, background included
    stem_width: int = 64        # conv1's filters; every ResNet width scales with it
    fpn_channels: int = 256     # TOP_DOWN_PYRAMID_SIZE
    rpn_channels: int = 512     # rpn_conv_shared's filters
    anchors_per_location: int = 3
    pool_size: int = 7          # POOL_SIZE (mrcnn_class_conv1's kernel)
    fc_dim: int = 1024          # FPN_CLASSIF_FC_LAYERS_SIZE
    mask_channels: int = 256    # the mask head's convs

    @property
    def width_multiplier(self) -> float:
        """conv1's filters / 64: 1 for the seed's own ResNets."""
        return self.stem_width / 64


def _bottlenecks(arch: SeedArchitecture):
    """Yield (block name like "2a", in channels, planes, projection shortcut) for every ResNet block."""
    counts = {2: 2, 3: 3, 4: IDENTITY_BLOCKS_STAGE4[arch.depth], 5: 2}
    cin = arch.stem_width
    for stage, identities in counts.items():
        planes = arch.stem_width * 2 ** (stage - 2)
        for i in range(identities + 1):
            yield f"{stage}{chr(ord('a') + i)}", cin, planes, i == 0
            cin = 4 * planes


def seed_weight_shapes(arch: SeedArchitecture) -> dict[str, dict[str, tuple]]:
    """Every weight of the seed's predict graph, {layer: {weight: shape}}."""
    shapes: dict[str, dict[str, tuple]] = {}

    def conv(name, k, cin, cout):
        shapes[name] = {"kernel": (k, k, cin, cout), "bias": (cout,)}

    def bn(name, channels):
        shapes[name] = {w: (channels,) for w in BATCH_NORM_WEIGHTS}

    conv("conv1", 7, 3, arch.stem_width)
    bn("bn_conv1", arch.stem_width)
    stage_out = {}
    for block, cin, planes, projection in _bottlenecks(arch):
        for branch, k, a, b in (("2a", 1, cin, planes), ("2b", 3, planes, planes), ("2c", 1, planes, 4 * planes)):
            conv(f"res{block}_branch{branch}", k, a, b)
            bn(f"bn{block}_branch{branch}", b)
        if projection:
            conv(f"res{block}_branch1", 1, cin, 4 * planes)
            bn(f"bn{block}_branch1", 4 * planes)
        stage_out[int(block[0])] = 4 * planes
    f = arch.fpn_channels
    for level in (5, 4, 3, 2):
        conv(f"fpn_c{level}p{level}", 1, stage_out[level], f)
    for level in (2, 3, 4, 5):
        conv(f"fpn_p{level}", 3, f, f)
    a = arch.anchors_per_location
    conv("rpn_conv_shared", 3, f, arch.rpn_channels)
    conv("rpn_class_raw", 1, arch.rpn_channels, 2 * a)
    conv("rpn_bbox_pred", 1, arch.rpn_channels, 4 * a)
    fc, k = arch.fc_dim, arch.num_classes
    conv("mrcnn_class_conv1", arch.pool_size, f, fc)
    bn("mrcnn_class_bn1", fc)
    conv("mrcnn_class_conv2", 1, fc, fc)
    bn("mrcnn_class_bn2", fc)
    shapes["mrcnn_class_logits"] = {"kernel": (fc, k), "bias": (k,)}
    shapes["mrcnn_bbox_fc"] = {"kernel": (fc, 4 * k), "bias": (4 * k,)}
    m = arch.mask_channels
    for i in range(1, 5):
        conv(f"mrcnn_mask_conv{i}", 3, f if i == 1 else m, m)
        bn(f"mrcnn_mask_bn{i}", m)
    shapes["mrcnn_mask_deconv"] = {"kernel": (2, 2, m, m), "bias": (m,)}   # Conv2DTranspose: (kh, kw, out, in)
    conv("mrcnn_mask", 1, m, k)
    return shapes


def _shape(weights: Weights, layer: str, weight: str, source: str) -> tuple:
    if layer not in weights or weight not in weights[layer]:
        raise ConversionError(f"{source}: no {layer}/{weight}: not a Mask R-CNN of the seed's (matterport's) graph")
    return tuple(weights[layer][weight].shape)


def infer_seed_architecture(weights: Weights, source: str = "weights") -> SeedArchitecture:
    """The architecture behind `weights` (from read_keras_h5): classes from mrcnn_class_logits, ResNet
    depth from the stage-4 blocks present (res4w_branch2a exists only in ResNet-101), widths from the
    kernels. Raises ConversionError naming the first layer it needs and does not find."""
    stage4 = 0
    while f"res4{chr(ord('b') + stage4)}_branch2a" in weights:
        stage4 += 1
    depth = next((d for d, n in IDENTITY_BLOCKS_STAGE4.items() if n == stage4), None)
    if depth is None:
        _shape(weights, "res4b_branch2a", "kernel", source)
        raise ConversionError(f"{source}: {stage4} identity blocks in ResNet stage 4 (res4b..): neither the "
                                "seed's ResNet-50 (5) nor ResNet-101 (22)")
    rpn_class = _shape(weights, "rpn_class_raw", "kernel", source)
    class_conv = _shape(weights, "mrcnn_class_conv1", "kernel", source)
    return SeedArchitecture(
        depth=depth,
        num_classes=_shape(weights, "mrcnn_class_logits", "kernel", source)[1],
        stem_width=_shape(weights, "conv1", "kernel", source)[3],
        fpn_channels=_shape(weights, "fpn_c5p5", "kernel", source)[3],
        rpn_channels=_shape(weights, "rpn_conv_shared", "kernel", source)[3],
        anchors_per_location=rpn_class[3] // 2,
        pool_size=class_conv[0],
        fc_dim=class_conv[3],
        mask_channels=_shape(weights, "mrcnn_mask_conv1", "kernel", source)[3])


def check_seed_weights(weights: Weights, arch: SeedArchitecture, source: str = "weights") -> None:
    """Raise ConversionError naming the first weight of the seed's graph that `weights` lacks or has in
    another shape, or the first layer it has that the graph does not."""
    expected = seed_weight_shapes(arch)
    for layer, fields in expected.items():
        for weight, shape in fields.items():
            found = _shape(weights, layer, weight, source)
            if found != shape:
                raise ConversionError(f"{source}: {layer}/{weight} has shape {found}, the seed's ResNet-{arch.depth} "
                                        f"graph with {arch.num_classes} classes needs {shape}")
        extra = sorted(set(weights[layer]) - set(fields))
        if extra:
            raise ConversionError(f"{source}: {layer} has an unexpected weight {extra[0]}")
    extra = [layer for layer in weights if layer not in expected]
    if extra:
        raise ConversionError(f"{source}: unexpected layer {extra[0]} (and {len(extra) - 1} more): not the seed's "
                                "Mask R-CNN graph")


def read_seed_weights(path: str | Path) -> tuple[Weights, SeedArchitecture]:
    """Read a seed / matterport Mask R-CNN .h5 and check it: (weights, architecture)."""
    weights = read_keras_h5(path)
    arch = infer_seed_architecture(weights, str(path))
    check_seed_weights(weights, arch, str(path))
    return weights, arch

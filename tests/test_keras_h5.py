"""Reading Keras 2 HDF5 weights (models/tools/keras_h5.py) without TensorFlow or Keras.

The committed reference tests/data/seed_reference_r50w8_512.h5 was written by Keras itself (tf-keras's
`save_weights`, bench/seed_reference.py) from the seed's predict graph: its layout is the genuine one.
Files of other layouts are made here with h5py by hand.
"""
from pathlib import Path

import h5py
import numpy as np
import pytest

from models.errors import ConversionError
from models.tools.keras_h5 import (
    SeedArchitecture,
    check_seed_weights,
    infer_seed_architecture,
    read_keras_h5,
    read_seed_weights,
    seed_weight_shapes,
)

DATA = Path(__file__).resolve().parent / "data"
REFERENCE = DATA / "seed_reference_r50w8_512"
RPN_LAYERS = ("rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred")


def write_keras2_h5(path: Path, groups: dict[str, dict[str, np.ndarray]], chunks: int = 1,
                    whole_model: bool = False) -> None:
    """Write {group: {weight path: array}} in Keras 2's HDF5 layout, as bytes attributes (older h5py),
    layer_names split into `chunks` attributes (as Keras does for long lists), optionally inside the
    model_weights group of a whole-model save."""
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if whole_model else f
        if whole_model:
            f.attrs["model_config"] = '{"class_name": "Model"}'
        names = [n.encode() for n in groups]
        parts = np.array_split(np.array(names, dtype=object), chunks)
        for i, part in enumerate(parts):
            root.attrs[f"layer_names{i}" if chunks > 1 else "layer_names"] = np.array(list(part), dtype="S")
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.1.6"
        for group_name, weights in groups.items():
            group = root.create_group(group_name)
            group.attrs["weight_names"] = np.array([w.encode() for w in weights], dtype="S")
            for weight_path, value in weights.items():
                group.create_dataset(weight_path, data=value)


def keras2_groups(shapes: dict[str, dict[str, tuple]]) -> dict[str, dict[str, np.ndarray]]:
    """The seed's layers as Keras saves them: rpn layers nested in an rpn_model group, ":0" suffixes,
    plus a layer without weights."""
    groups = {"input_image": {}}
    for layer, fields in shapes.items():
        group = "rpn_model" if layer in RPN_LAYERS else layer
        for weight, shape in fields.items():
            groups.setdefault(group, {})[f"{layer}/{weight}:0"] = np.full(shape, 0.5, np.float32)
    return groups


def test_reads_the_seed_reference_written_by_keras():
    weights = read_keras_h5(REFERENCE.with_suffix(".h5"))
    settings = np.load(REFERENCE.with_suffix(".npz"))
    arch = infer_seed_architecture(weights)
    # The architecture inferred from the shapes is the one the reference script configured.
    assert str(settings["config/BACKBONE"]) == "resnet50" and arch.depth == 50
    assert arch.num_classes == int(settings["config/NUM_CLASSES"]) == 81
    assert arch.width_multiplier == float(settings["config/WIDTH_MULTIPLIER"]) == 0.125
    assert arch.fpn_channels == int(settings["config/TOP_DOWN_PYRAMID_SIZE"])
    assert arch.fc_dim == int(settings["config/FPN_CLASSIF_FC_LAYERS_SIZE"])
    assert arch.pool_size == int(settings["config/POOL_SIZE"])
    assert arch.anchors_per_location == len(settings["config/RPN_ANCHOR_RATIOS"])
    # Every layer of the seed's graph, with its shapes, and nothing else.
    check_seed_weights(weights, arch, "reference")
    assert set(weights) == set(seed_weight_shapes(arch))
    # Shapes written out by hand for the layers that carry the layout's special cases.
    assert weights["conv1"]["kernel"].shape == (7, 7, 3, 8)
    assert set(weights["bn_conv1"]) == {"gamma", "beta", "moving_mean", "moving_variance"}
    assert "res4f_branch2a" in weights and "res4g_branch2a" not in weights
    assert weights["res5a_branch1"]["kernel"].shape == (1, 1, 128, 256)
    assert "rpn_model" not in weights                                    # nested model, flattened
    assert weights["rpn_conv_shared"]["kernel"].shape == (3, 3, 32, 64)
    assert weights["rpn_class_raw"]["kernel"].shape == (1, 1, 64, 6)
    assert weights["rpn_bbox_pred"]["bias"].shape == (12,)
    assert weights["mrcnn_class_conv1"]["kernel"].shape == (7, 7, 32, 128)   # TimeDistributed wrappers
    assert weights["mrcnn_class_bn2"]["moving_variance"].shape == (128,)
    assert weights["mrcnn_mask_deconv"]["kernel"].shape == (2, 2, 32, 32)
    assert weights["mrcnn_mask"]["kernel"].shape == (1, 1, 32, 81)
    # The values are the file's: the nested model's datasets, and conditioned batch-norm statistics.
    with h5py.File(REFERENCE.with_suffix(".h5"), "r") as f:
        np.testing.assert_array_equal(weights["rpn_class_raw"]["kernel"], f["rpn_model/rpn_class_raw/kernel:0"][()])
        np.testing.assert_array_equal(weights["mrcnn_mask_bn1"]["gamma"], f["mrcnn_mask_bn1/mrcnn_mask_bn1/gamma:0"][()])
    assert all((w["moving_variance"] > 0).all() for w in weights.values() if "moving_variance" in w)
    assert not np.allclose(weights["bn_conv1"]["moving_mean"], 0)


@pytest.mark.parametrize("chunks, whole_model", [(1, False), (3, False), (1, True)])
def test_reads_the_keras2_layout_variants_and_infers_resnet101(tmp_path, chunks, whole_model):
    arch = SeedArchitecture(depth=101, num_classes=5, stem_width=8, fpn_channels=8, rpn_channels=16, fc_dim=16,
                            mask_channels=8)
    path = tmp_path / "mask_rcnn_shapes_0001.h5"
    write_keras2_h5(path, keras2_groups(seed_weight_shapes(arch)), chunks=chunks, whole_model=whole_model)
    weights, found = read_seed_weights(path)
    assert found == arch
    assert "res4w_branch2a" in weights and "input_image" not in weights
    assert weights["rpn_bbox_pred"]["kernel"].shape == (1, 1, 16, 12)


def test_another_architecture_is_named_in_one_line(tmp_path):
    arch = SeedArchitecture(depth=50, num_classes=3, stem_width=8, fpn_channels=8, rpn_channels=8, fc_dim=8,
                            mask_channels=8)
    shapes = seed_weight_shapes(arch)

    def error(edit) -> str:
        changed = {layer: dict(fields) for layer, fields in shapes.items()}
        edit(changed)
        path = tmp_path / "other.h5"
        write_keras2_h5(path, keras2_groups(changed))
        with pytest.raises(ConversionError) as e:
            read_seed_weights(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value)
        return str(e.value)

    assert "mrcnn_mask_bn2/gamma" in error(lambda s: s.pop("mrcnn_mask_bn2"))
    assert "mrcnn_bbox_fc/kernel has shape (8, 16)" in error(lambda s: s["mrcnn_bbox_fc"].update(kernel=(8, 16)))
    assert "unexpected layer mrcnn_extra" in error(lambda s: s.update(mrcnn_extra={"kernel": (1, 1)}))
    assert "rpn_class_raw" in error(lambda s: s.pop("rpn_class_raw"))
    assert "2 identity blocks in ResNet stage 4" in error(
        lambda s: [s.pop(k) for k in list(s) if k.startswith(("res4d", "res4e", "res4f", "bn4d", "bn4e", "bn4f"))])


def make_without_weights(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = '{"class_name": "Model", "config": {}}'


def make_empty_h5(path: Path) -> None:
    h5py.File(path, "w").close()


def make_weights_without_values(path: Path) -> None:
    write_keras2_h5(path, {"input_image": {}, "lambda": {}})


def make_keras3(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("layers/conv2d/vars/0", data=np.zeros((3, 3, 3, 8), np.float32))
        f.create_dataset("layers/conv2d/vars/1", data=np.zeros((8,), np.float32))
        f.create_group("vars")


def make_text(path: Path) -> None:
    path.write_text("these are not weights\n")


def make_missing_dataset(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"conv1"])
        f.create_group("conv1").attrs["weight_names"] = np.array([b"conv1/kernel:0"])


@pytest.mark.parametrize("name, make, problem", [
    ("config_only.h5", make_without_weights, "model config but no weights"),
    ("empty.h5", make_empty_h5, "without Keras weights"),
    ("no_values.h5", make_weights_without_values, "no weights in it"),
    ("model.weights.h5", make_keras3, "Keras 3 weights file"),
    ("weights.txt", make_text, "not an HDF5 file"),
    ("broken.h5", make_missing_dataset, "lists weight conv1/kernel:0 but has no such dataset"),
])
def test_bad_files_are_one_line_naming_the_file(tmp_path, name, make, problem):
    path = tmp_path / name
    make(path)
    with pytest.raises(ConversionError) as e:
        read_keras_h5(path)
    message = str(e.value)
    assert problem in message and message.startswith(str(path)) and "\n" not in message


@pytest.mark.parametrize("given", ["model.ckpt.index", "model.ckpt.data-00000-of-00001", "model.ckpt"])
def test_a_tensorflow_checkpoint_is_named_as_such(tmp_path, given):
    (tmp_path / "model.ckpt.index").write_bytes(b"\x00not an sstable")
    (tmp_path / "model.ckpt.data-00000-of-00001").write_bytes(b"\x00" * 64)
    with pytest.raises(ConversionError) as e:
        read_keras_h5(tmp_path / given)
    message = str(e.value)
    assert message.startswith(str(tmp_path / given)) and "TensorFlow checkpoint (model.ckpt.index" in message
    assert "\n" not in message


def test_a_missing_file(tmp_path):
    with pytest.raises(ConversionError, match="no such file"):
        read_keras_h5(tmp_path / "nothing.h5")


# ----------------------------------------------------------------------------------------------------
# `maskstream convert keras`: the seed's .h5 into the project's .npz, and bad inputs in one line
# ----------------------------------------------------------------------------------------------------

def convert_keras(capsys, *argv) -> tuple[int, str, str]:
    """`maskstream convert keras ARGV` in this process: (exit code, stdout, stderr)."""
    from pipeline import cli

    try:
        code = cli.main(["convert", "keras", *map(str, argv)])
    except SystemExit as done:
        code = done.code
    out, err = capsys.readouterr()
    return code, out, err


def test_convert_keras_writes_weights_that_load_into_the_seed_configuration(tmp_path, capsys):
    import models
    from models.weights import read_weights

    code, out, err = convert_keras(capsys, REFERENCE.with_suffix(".h5"), tmp_path / "seed.npz")
    assert code == 0, err
    params, meta = read_weights(tmp_path / "seed.npz")
    # The narrow reference is not the shipped seed_r50_coco.yaml: its configuration is written beside it.
    config = models.load_config(tmp_path / "seed.yaml")
    assert meta["config_file"] == str(tmp_path / "seed.yaml") and f"its configuration: {tmp_path / 'seed.yaml'}" in out
    assert (config.backbone.depth, config.backbone.width, config.fpn.channels, config.rpn.conv_channels,
            config.box_head.fc_dim, config.mask_head.conv_dims) == (50, 8, 32, 64, 128, [32] * 4)
    assert config.class_names[:3] == ["__background__", "person", "bicycle"] and config.num_classes == 81
    assert config.seed_frame and config.backbone.stride_in_1x1 and config.rpn.objectness == "softmax"
    model = models.load_model(tmp_path / "seed.yaml", weights=tmp_path / "seed.npz")
    assert set(model.params) == set(params)
    # Folded: conv1's kernel is the .h5's times gamma / sqrt(var + 1e-3), per output channel.
    h5 = read_keras_h5(REFERENCE.with_suffix(".h5"))
    bn = h5["bn_conv1"]
    scale = bn["gamma"].astype(np.float64) / np.sqrt(bn["moving_variance"].astype(np.float64) + 1e-3)
    np.testing.assert_allclose(params["backbone/conv1/kernel"], h5["conv1"]["kernel"] * scale, rtol=1e-6)
    # The seed's (dy, dx, dh, dw) deltas become (dx, dy, dw, dh): class 3's dx is the seed's column 13.
    np.testing.assert_array_equal(params["box_head/bbox_pred/kernel"][:, 12], h5["mrcnn_bbox_fc"]["kernel"][:, 13])
    np.testing.assert_array_equal(params["rpn/deltas/bias"][4:8], h5["rpn_bbox_pred"]["bias"][[5, 4, 7, 6]])


def test_convert_keras_names_classes_from_the_seeds_classes_file(tmp_path, capsys):
    arch = SeedArchitecture(depth=50, num_classes=3, stem_width=8, fpn_channels=8, rpn_channels=8, fc_dim=8,
                            mask_channels=8)
    write_keras2_h5(tmp_path / "shapes.h5", keras2_groups(seed_weight_shapes(arch)))
    code, _, err = convert_keras(capsys, tmp_path / "shapes.h5", tmp_path / "shapes.npz")
    assert code == 2 and "3 classes, not COCO's 81: name them with --classes FILE" in err and err.count("\n") == 1
    (tmp_path / "shape_classes.txt").write_text("circle\nsquare\n")      # the seed's format: no background
    code, _, err = convert_keras(capsys, tmp_path / "shapes.h5", tmp_path / "shapes.npz", "--classes",
                                 tmp_path / "shape_classes.txt")
    assert code == 0, err
    import models
    assert models.load_config(tmp_path / "shapes.yaml").class_names == ["__background__", "circle", "square"]
    (tmp_path / "too_many.txt").write_text("circle\nsquare\ntriangle\nstar\n")
    code, _, err = convert_keras(capsys, tmp_path / "shapes.h5", tmp_path / "shapes.npz", "--classes",
                                 tmp_path / "too_many.txt")
    assert code == 2 and "4 class names, but" in err and err.count("\n") == 1


def make_tensorflow_checkpoint(path: Path) -> Path:
    """A genuine TensorFlow checkpoint (tf.train.Checkpoint.write): returns its .index file."""
    import tensorflow as tf

    prefix = tf.train.Checkpoint(kernel=tf.Variable(np.zeros((3, 3), np.float32))).write(str(path / "model.ckpt"))
    return Path(prefix + ".index")


def make_genuine_keras3(path: Path) -> Path:
    """A genuine Keras 3 `.weights.h5` (keras.Model.save_weights)."""
    import keras

    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(8, 3, name="conv1")])
    model.save_weights(path / "model.weights.h5")
    return path / "model.weights.h5"


def make_other_architecture(path: Path) -> Path:
    arch = SeedArchitecture(depth=50, num_classes=81, stem_width=8, fpn_channels=8, rpn_channels=8, fc_dim=8,
                            mask_channels=8)
    groups = keras2_groups(seed_weight_shapes(arch))
    del groups["mrcnn_mask_deconv"]
    write_keras2_h5(path / "other.h5", groups)
    return path / "other.h5"


def make_imagenet_resnet50(path: Path) -> Path:
    """Keras's ImageNet ResNet-50 classifier (resnet50_weights_tf_dim_ordering_tf_kernels.h5, the file
    matterport's code starts training from): the same backbone layer names, fc1000 instead of the heads."""
    arch = SeedArchitecture(depth=50, num_classes=81, stem_width=8)
    shapes = {layer: fields for layer, fields in seed_weight_shapes(arch).items()
              if layer.startswith(("conv1", "bn", "res"))}
    shapes["fc1000"] = {"kernel": (256, 1000), "bias": (1000,)}
    write_keras2_h5(path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5", keras2_groups(shapes))
    return path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"


def make_mis_shaped(path: Path) -> Path:
    """The seed's graph with a mask head of 28 classes beside a box head of 81."""
    shapes = seed_weight_shapes(SeedArchitecture(depth=50, num_classes=81, stem_width=8, fpn_channels=8,
                                                 rpn_channels=8, fc_dim=8, mask_channels=8))
    shapes["mrcnn_mask"] = {"kernel": (1, 1, 8, 28), "bias": (28,)}
    write_keras2_h5(path / "mixed.h5", keras2_groups(shapes))
    return path / "mixed.h5"


def make_config_only(path: Path) -> Path:
    make_without_weights(path / "model_only.h5")
    return path / "model_only.h5"


@pytest.mark.parametrize("make, problem", [
    (make_config_only, "an HDF5 file with a Keras model config but no weights"),
    (make_genuine_keras3, "a Keras 3 weights file (layers/.../vars layout)"),
    (make_tensorflow_checkpoint, "a TensorFlow checkpoint (model.ckpt.index + .data-*)"),
    (make_other_architecture, "no mrcnn_mask_deconv/kernel: not a Mask R-CNN of the seed's (matterport's) graph"),
    (make_imagenet_resnet50, "no rpn_class_raw/kernel: not a Mask R-CNN of the seed's (matterport's) graph"),
    (make_mis_shaped, "mrcnn_mask/kernel has shape (1, 1, 8, 28), the seed's ResNet-50 graph with 81 classes "
                      "needs (1, 1, 8, 81)"),
])
def test_convert_keras_bad_input_is_one_line(tmp_path, capsys, make, problem):
    src = make(tmp_path)
    code, out, err = convert_keras(capsys, src, tmp_path / "out.npz")
    assert code == 2 and out == ""
    assert err.startswith(f"error: {src}: {problem}") and err.count("\n") == 1
    assert not (tmp_path / "out.npz").exists()

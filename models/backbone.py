"""ResNet backbone (depths 18, 34, 50, 101) with frozen batch norm folded into each conv.

Returns the outputs of the four residual stages C2..C5 (strides 4, 8, 16, 32). The layout
follows torchvision's ResNet v1.5 (stride on the 3x3 conv of a bottleneck), so its weights
import one to one; `stride_in_1x1` and `stem_pool: same` give the seed's ResNet v1 (Keras).
"""
from __future__ import annotations

import tensorflow as tf

from .config import RESNET_BLOCKS, BackboneConfig
from .layers import Params, conv2d, conv_shapes


def is_bottleneck(depth: int) -> bool:
    return depth >= 50


def stage_channels(cfg: BackboneConfig) -> list[int]:
    """Output channels of C2..C5."""
    expansion = 4 if is_bottleneck(cfg.depth) else 1
    return [cfg.width * m * expansion for m in (1, 2, 4, 8)]


def residual_blocks(cfg: BackboneConfig):
    """Yield (name, in_channels, planes, stride, has_downsample) for every residual block."""
    expansion = 4 if is_bottleneck(cfg.depth) else 1
    inplanes = cfg.width
    for stage, count in enumerate(RESNET_BLOCKS[cfg.depth]):
        planes = cfg.width * 2 ** stage
        for i in range(count):
            stride = 2 if (stage > 0 and i == 0) else 1
            downsample = i == 0 and (stride != 1 or inplanes != planes * expansion)
            yield f"backbone/layer{stage + 1}/{i}", inplanes, planes, stride, downsample
            inplanes = planes * expansion


def backbone_shapes(cfg: BackboneConfig) -> dict[str, tuple]:
    shapes = conv_shapes("backbone/conv1", 7, 3, cfg.width)
    bottleneck = is_bottleneck(cfg.depth)
    for name, cin, planes, _, downsample in residual_blocks(cfg):
        if bottleneck:
            shapes.update(conv_shapes(f"{name}/conv1", 1, cin, planes))
            shapes.update(conv_shapes(f"{name}/conv2", 3, planes, planes))
            shapes.update(conv_shapes(f"{name}/conv3", 1, planes, planes * 4))
            out = planes * 4
        else:
            shapes.update(conv_shapes(f"{name}/conv1", 3, cin, planes))
            shapes.update(conv_shapes(f"{name}/conv2", 3, planes, planes))
            out = planes
        if downsample:
            shapes.update(conv_shapes(f"{name}/downsample", 1, cin, out))
    return shapes


def last_conv_of_blocks(cfg: BackboneConfig) -> list[str]:
    """Names of the last conv of every residual branch (zero-initialised when training from scratch)."""
    last = "conv3" if is_bottleneck(cfg.depth) else "conv2"
    return [f"{name}/{last}/kernel" for name, *_ in residual_blocks(cfg)]


def stem_max_pool(x: tf.Tensor, padding: str) -> tf.Tensor:
    """(B, H, W, C) after the stem's ReLU -> (B, ceil(H / 2), ceil(W / 2), C): a 3x3/2 max-pool.

    "symmetric" pads 1 on every side (torchvision; inputs are >= 0 after the ReLU, so zero padding
    equals -inf padding); "same" is TensorFlow's SAME, which pads only the bottom and right of an
    even-sized input (the seed's MaxPooling2D(padding="same")): windows start one pixel later.
    """
    if padding == "same":
        return tf.nn.max_pool2d(x, 3, 2, "SAME")
    return tf.nn.max_pool2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), 3, 2, "VALID")


def resnet(params: Params, images: tf.Tensor, cfg: BackboneConfig) -> list[tf.Tensor]:
    """images (B, H, W, 3) normalised, H and W multiples of 32 -> [C2, C3, C4, C5].

    C_k has shape (B, H / 2^k, W / 2^k, stage_channels[k - 2]).
    """
    x = conv2d(images, params, "backbone/conv1", stride=2, relu=True)
    x = stem_max_pool(x, cfg.stem_pool)
    bottleneck = is_bottleneck(cfg.depth)
    outputs = []
    current_stage = "layer1"
    for name, _, _, stride, downsample in residual_blocks(cfg):
        stage = name.split("/")[1]
        if stage != current_stage:
            outputs.append(x)
            current_stage = stage
        shortcut = conv2d(x, params, f"{name}/downsample", stride=stride) if downsample else x
        if bottleneck:
            y = conv2d(x, params, f"{name}/conv1", stride=stride if cfg.stride_in_1x1 else 1, relu=True)
            y = conv2d(y, params, f"{name}/conv2", stride=1 if cfg.stride_in_1x1 else stride, relu=True)
            y = conv2d(y, params, f"{name}/conv3")
        else:
            y = conv2d(x, params, f"{name}/conv1", stride=stride, relu=True)
            y = conv2d(y, params, f"{name}/conv2")
        x = tf.nn.relu(y + shortcut)
    outputs.append(x)
    return outputs

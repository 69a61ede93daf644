"""Feature pyramid network: lateral 1x1 convs, a nearest-neighbour top-down path, 3x3 output
convs, and P6 as a stride-2 subsampling of P5 (max-pool with kernel 1, stride 2)."""
from __future__ import annotations

import tensorflow as tf

from .layers import Params, conv2d, conv_shapes


def fpn_shapes(in_channels: list[int], channels: int) -> dict[str, tuple]:
    shapes = {}
    for i, cin in enumerate(in_channels):
        shapes.update(conv_shapes(f"fpn/inner{i}", 1, cin, channels))
        shapes.update(conv_shapes(f"fpn/layer{i}", 3, channels, channels))
    return shapes


def upsample2x(x: tf.Tensor) -> tf.Tensor:
    """(B, H, W, C) -> (B, 2H, 2W, C), each value repeated in a 2x2 block (nearest)."""
    b, h, w, c = tf.unstack(tf.shape(x))
    x = tf.reshape(x, [b, h, 1, w, 1, c])
    x = tf.tile(x, [1, 1, 2, 1, 2, 1])
    return tf.reshape(x, [b, 2 * h, 2 * w, c])


def fpn(params: Params, features: list[tf.Tensor]) -> list[tf.Tensor]:
    """[C2, C3, C4, C5] -> [P2, P3, P4, P5, P6], each with the FPN's channel count.

    Every C_k is exactly twice the spatial size of C_{k+1} (inputs are padded to a multiple of 32).
    """
    last = conv2d(features[-1], params, f"fpn/inner{len(features) - 1}")
    outputs = [conv2d(last, params, f"fpn/layer{len(features) - 1}")]
    for i in range(len(features) - 2, -1, -1):
        last = conv2d(features[i], params, f"fpn/inner{i}") + upsample2x(last)
        outputs.insert(0, conv2d(last, params, f"fpn/layer{i}"))
    outputs.append(outputs[-1][:, ::2, ::2, :])
    return outputs

"""The few primitive layers the stages share: convolution with torch-style symmetric padding,
dense, and the parameter-shape bookkeeping.

Parameters live in a flat mapping `name -> tensor` ("backbone/layer1/0/conv1/kernel"); every
stage declares the shapes it needs with `conv_shapes` / `dense_shapes`, and reads them back
by the same names. Kernels are HWIO (TensorFlow's layout); frozen batch norm is folded into the
preceding convolution's kernel and bias when weights are imported.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from . import winograd

Params = dict  # name -> tf.Tensor / tf.Variable


def conv_shapes(name: str, k: int, cin: int, cout: int) -> dict[str, tuple]:
    return {f"{name}/kernel": (k, k, cin, cout), f"{name}/bias": (cout,)}


def dense_shapes(name: str, cin: int, cout: int) -> dict[str, tuple]:
    return {f"{name}/kernel": (cin, cout), f"{name}/bias": (cout,)}


def conv2d(x: tf.Tensor, params: Params, name: str, stride: int = 1, relu: bool = False) -> tf.Tensor:
    """(B, H, W, Cin) -> (B, H', W', Cout); a k x k kernel is padded k // 2 on every side, like torch.
    A 3x3 stride-1 convolution in float32 whose Winograd kernel is in `params` (`{name}/winograd`,
    an inference model's: models/winograd.py) runs as Winograd F(m x m, 3x3)."""
    transformed = params.get(f"{name}/winograd")
    if transformed is not None and stride == 1 and x.dtype == tf.float32:
        return winograd.conv3x3(x, transformed, params[f"{name}/bias"], relu)
    kernel = tf.cast(params[f"{name}/kernel"], x.dtype)
    k = kernel.shape[0]
    pad = k // 2
    if pad == 0:
        padding = "VALID"
    elif stride == 1:
        padding = "SAME"  # symmetric for odd kernels at stride 1
    else:
        padding = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
    y = tf.nn.conv2d(x, kernel, strides=stride, padding=padding)
    y = tf.nn.bias_add(y, tf.cast(params[f"{name}/bias"], x.dtype))
    return tf.nn.relu(y) if relu else y


def dense(x: tf.Tensor, params: Params, name: str, relu: bool = False) -> tf.Tensor:
    """(N, Cin) -> (N, Cout)."""
    y = tf.matmul(x, tf.cast(params[f"{name}/kernel"], x.dtype)) + tf.cast(params[f"{name}/bias"], x.dtype)
    return tf.nn.relu(y) if relu else y


def init_params(shapes: dict[str, tuple], seed: int, special: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Random initial values: He-normal kernels, zero biases.

    `special` maps a name prefix to a fixed standard deviation (for example 0.01 for the
    prediction layers, or 0.0 to zero-initialise the last conv of each residual branch).
    """
    rng = np.random.default_rng(seed)
    special = special or {}
    out = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith("/bias"):
            out[name] = np.zeros(shape, np.float32)
            continue
        std = next((s for prefix, s in special.items() if name.startswith(prefix)), None)
        if std is None:
            fan_in = int(np.prod(shape[:-1]))
            std = float(np.sqrt(2.0 / fan_in))
        out[name] = (rng.standard_normal(shape) * std).astype(np.float32)
    return out

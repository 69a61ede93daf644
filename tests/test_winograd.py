"""Winograd F(2x2, 3x3) and F(4x4, 3x3) (models/winograd.py, its custom op compiled on first use): the
same convolution as TensorFlow's direct one, used where it applies and nowhere else, and a machine
that cannot build it runs the direct convolution and says why."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import models
from models import winograd
from models.layers import conv2d

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs" / "test_tiny.yaml")


def test_the_op_builds_here():
    """CI installs g++ (.ci/run): where this fails, the model runs the direct convolution."""
    assert winograd.available(), winograd.unavailable()


def direct(x, kernel, bias, relu):
    y = tf.nn.bias_add(tf.nn.conv2d(x, kernel, strides=1, padding="SAME"), bias)
    return tf.nn.relu(y) if relu else y


def exact(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, relu: bool) -> np.ndarray:
    """The float64 3x3 'SAME' convolution, (B, H, W, C) -> (B, H, W, K)."""
    _, h, w, _ = x.shape
    padded = np.pad(x.astype(np.float64), [(0, 0), (1, 1), (1, 1), (0, 0)])
    y = sum(padded[:, i:i + h, j:j + w] @ kernel[i, j].astype(np.float64) for i in range(3) for j in range(3)) + bias
    return np.maximum(y, 0) if relu else y


# The largest error against the float64 convolution, as a fraction of its largest output: F(2x2) is
# more exact than oneDNN's direct float32 convolution (2e-6 here), F(4x4) within a few times it.
ERROR = {2: 2e-6, 4: 1e-5}


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("batch, height, width, cin, cout, relu", [
    (1, 8, 8, 64, 64, False),      # whole tiles, whole channel blocks
    (3, 7, 9, 70, 33, True),       # tiles cut by the border, channel blocks cut short, a batch
    (2, 1, 1, 3, 5, False),        # a single pixel: one tile, nearly all padding
    (1, 45, 80, 128, 128, True),   # the default model's P4
    (2, 14, 14, 256, 256, True),   # the mask head
])
def test_winograd_is_the_convolution_up_to_float32_rounding(tile, batch, height, width, cin, cout, relu):
    assert winograd.available(), winograd.unavailable()
    rng = np.random.default_rng(batch * 1000 + height)
    x = rng.normal(size=(batch, height, width, cin)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, cin, cout)).astype(np.float32) / np.sqrt(9 * cin)
    bias = rng.normal(size=cout).astype(np.float32)
    want = exact(x, kernel, bias, relu)
    transformed = tf.constant(winograd.transform_kernel(kernel, tile))
    got = winograd.conv3x3(tf.constant(x), transformed, bias, relu).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= ERROR[tile] * np.abs(want).max()
    assert np.abs(direct(x, kernel, bias, relu).numpy() - want).max() <= 1e-5 * np.abs(want).max()  # the yardstick
    if relu:
        assert (got >= 0).all()
    # each image of a batch as it is alone
    for i in range(batch):
        alone = winograd.conv3x3(tf.constant(x[i:i + 1]), transformed, bias, relu).numpy()
        np.testing.assert_allclose(alone[0], got[i], rtol=0, atol=ERROR[tile] * np.abs(want).max())


def test_conv2d_takes_winograd_only_for_3x3_stride_1_float32_with_a_transform():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(1, 12, 10, 16)), tf.float32)
    kernel = rng.normal(size=(3, 3, 16, 8)).astype(np.float32)
    bias = np.zeros(8, np.float32)
    # A transform of another kernel shows which path ran: Winograd gives that kernel's convolution.
    other = rng.normal(size=(3, 3, 16, 8)).astype(np.float32)
    params = {"c/kernel": kernel, "c/bias": bias, "c/winograd": tf.constant(winograd.transform_kernel(other))}
    np.testing.assert_allclose(conv2d(x, params, "c"), direct(x, other, bias, False), atol=1e-3)
    strided = conv2d(x, params, "c", stride=2)
    np.testing.assert_allclose(strided, tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), kernel, 2, "VALID"),
                               atol=1e-4)
    half = conv2d(tf.cast(x, tf.bfloat16), params, "c")
    assert half.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(half, tf.float32), direct(x, kernel, bias, False), rtol=0.05, atol=0.3)


def test_inference_models_in_float32_use_it_and_training_and_bfloat16_do_not():
    model = models.load_model(TINY, seed=1)
    assert model.convolution == "winograd 4x4"
    assert {value.shape[0] for name, value in model.stage_params.items() if name.endswith("/winograd")} == {36}
    assert models.load_model(TINY, seed=1, winograd_tile=2).convolution == "winograd 2x2"
    assert models.load_model(TINY, seed=1, winograd_tile=None).convolution == "direct"
    assert models.load_model(TINY, seed=1, trainable=True).convolution == "direct"
    config = models.load_config(TINY)
    config.precision = "bfloat16"
    assert models.load_model(config, seed=1).convolution == "direct"


def run_python(code: str, **env) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_without_a_compiler_or_turned_off_the_model_runs_the_direct_convolution_and_says_why(tmp_path):
    code = ("import models; from models import winograd; "
            f"print(models.load_model({TINY!r}, seed=1).convolution); print(winograd.unavailable())")
    assert run_python(code, CXX=str(tmp_path / "no-compiler"), MASKSTREAM_CACHE=str(tmp_path)).splitlines() == [
        "direct", f"cannot build winograd.cc: [Errno 2] No such file or directory: '{tmp_path / 'no-compiler'}'"]
    assert not list(tmp_path.glob("kernels/*.so")) and not list(tmp_path.glob("kernels/*.part"))
    assert run_python(code, MASKSTREAM_WINOGRAD="0").splitlines() == ["direct", "turned off (MASKSTREAM_WINOGRAD=0)"]


def test_the_environment_picks_f2x2_for_the_most_exact_outputs():
    code = ("import models; model = models.load_model(%r, seed=1); print(model.convolution); "
            "print(sorted({v.shape[0] for n, v in model.stage_params.items() if n.endswith('/winograd')}))" % TINY)
    assert run_python(code, MASKSTREAM_WINOGRAD="2").splitlines() == ["winograd 2x2", "[16]"]
    assert run_python(code, MASKSTREAM_WINOGRAD="").splitlines() == ["winograd 4x4", "[36]"]

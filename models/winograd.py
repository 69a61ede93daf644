"""Winograd F(4x4, 3x3) for the 3x3 stride-1 convolutions at float32 inference on the CPU.

A 3x3 convolution computed on 6x6 input tiles, each giving a 4x4 output tile, takes 36
multiplications per tile and channel pair instead of 144: the input tiles are transformed
(`WinogradInput`, B^T d B), multiplied by the transformed kernels (G g G^T, computed once in
float64 per model) as 36 matrix products (tiles x C) @ (C x K), one batched `tf.linalg.matmul`
that oneDNN runs near the machine's matmul rate, and transformed back (`WinogradOutput`, A^T m A,
with the bias and ReLU). F(2x2, 3x3) (4x4 tiles, 16 products for 36) is the other tile the op
computes (`transform_kernel(kernel, 2)`).

Winograd trades exactness for speed as the tile grows: the transforms' large coefficients amplify
float32 rounding. F(4x4) is built on the points 0, 1, -1, 2, -1/2 and infinity instead of the
usual 0, +-1, +-2, infinity (Lavin and Gray, 2016): of 0, +-1 and any two of 14 small fractions,
the most exact with its mirror image (-2, 1/2), its largest error 2.6x smaller than the usual
points' and its typical one 1.5x (bench/winograd_points.py; on choosing the points: Barabasz et
al., 2020). Measured against the float64 convolution (bench/winograd.py, the largest
error as a fraction of the largest output): oneDNN's direct convolution 1.5-2.7e-6, F(2x2)
5-9e-7, F(4x4) 4-6e-6; with the usual points F(4x4) moved a score of torchvision v2's parity
reference by 1.06e-3 (past the 1e-3 its parity allows), with these by 6.5e-4 (F(2x2): 2.1e-4).
Speed on this machine: F(4x4) 1.3-2.6x oneDNN's direct convolution on the ResNet-50-FPN's and
the seed's 3x3 shapes (1.3x at 64 channels), 1.2-1.6x F(2x2) (bench/winograd.py); the reference
model 1.64x direct and 1.20x F(2x2) at batch 1 (bench/model.py).

The two transforms are a TensorFlow custom op, `kernels/winograd.cc`, compiled here on first use
with the C++ compiler (`CXX`, else `g++`) against the installed TensorFlow and cached (one file
per TensorFlow version, source, flags and CPU, under `$MASKSTREAM_CACHE` or
`~/.cache/maskstream`; a file lock keeps workers starting together from compiling it twice).
Where it cannot be built (no compiler, another platform) the model uses the direct convolution
and `unavailable()` says why in one line; so does a process whose TensorFlow has a GPU (the op
is the CPU's). `MASKSTREAM_WINOGRAD=0` turns it off, `MASKSTREAM_WINOGRAD=2` makes F(2x2) the models'. Training and bfloat16 always use the
direct convolution (the op has no gradient and computes in float32).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np
import tensorflow as tf

SOURCE = Path(__file__).resolve().parent / "kernels" / "winograd.cc"
# The models' output tile side m: F(m x m, 3 x 3) on (m + 2)^2 input tiles. MASKSTREAM_WINOGRAD=2 picks
# F(2x2, 3x3), more exact than the direct convolution and slower than F(4x4); 0 turns Winograd off.
TILE = 2 if os.environ.get("MASKSTREAM_WINOGRAD") == "2" else 4
# G, the kernel transform: F(2, 3) on the points 0, 1, -1, infinity; F(4, 3) on 0, 1, -1, 2, -1/2,
# infinity (B^T and A^T, the input and output transforms, are in kernels/winograd.cc).
KERNEL_TRANSFORMS = {2: np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]]),
                     4: np.array([[1, 0, 0], [-1 / 3, -1 / 3, -1 / 3], [1 / 3, -1 / 3, 1 / 3],
                                  [1 / 15, 2 / 15, 4 / 15], [-16 / 15, 8 / 15, -4 / 15], [0, 0, 1]])}
# g++ 12 with -march=native on CPUs with AVX512-FP16 cannot compile TensorFlow's own Eigen headers.
FLAG_SETS = (["-O3", "-march=native", "-mno-avx512fp16"], ["-O3", "-march=native"])

_ops = None
_reason: str | None = None


def transform_kernel(kernel: np.ndarray, tile: int = TILE) -> np.ndarray:
    """(3, 3, C, K) kernel -> ((tile + 2)^2, C, K) float32, G g G^T per channel pair (in float64)."""
    g = KERNEL_TRANSFORMS[tile]
    u = np.einsum("ir,rsck,js->ijck", g, np.asarray(kernel, np.float64), g)
    return u.reshape((tile + 2) ** 2, kernel.shape[2], kernel.shape[3]).astype(np.float32)


def conv3x3(x: tf.Tensor, transformed: tf.Tensor, bias: tf.Tensor, relu: bool = False) -> tf.Tensor:
    """(B, H, W, C) float32 -> (B, H, W, K): the 3x3 stride-1 'SAME' convolution of the kernel
    whose `transform_kernel` is `transformed` ((tile + 2)^2, C, K; the tile read from its first
    side), plus `bias` (K,), ReLU'd if `relu`. Needs `available()`."""
    tile = {16: 2, 36: 4}[transformed.shape[0]]
    products = tf.linalg.matmul(_ops.winograd_input(x, m=tile), transformed)     # ((tile + 2)^2, tiles, K)
    y = _ops.winograd_output(products, tf.shape(x)[:3], tf.cast(bias, tf.float32), m=tile, relu=relu)
    y.set_shape(x.shape[:3].concatenate([transformed.shape[-1]]))
    return y


def available() -> bool:
    """Whether the op is built and loaded in this process (building it on the first call)."""
    global _ops, _reason
    if _ops is None and _reason is None:
        if os.environ.get("MASKSTREAM_WINOGRAD", "1") == "0":
            _reason = "turned off (MASKSTREAM_WINOGRAD=0)"
        elif tf.config.list_logical_devices("GPU"):
            _reason = "a CPU op, and TensorFlow runs on a GPU here"
        else:
            try:
                _ops = tf.load_op_library(str(_library()))
            except (OSError, RuntimeError, tf.errors.NotFoundError) as error:
                _reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return _ops is not None


def unavailable() -> str | None:
    """Why the direct convolution runs instead (one line), or None when Winograd is available."""
    return None if available() else _reason


def _library() -> Path:
    """The compiled op for this TensorFlow, source and CPU: from the cache, or built into it."""
    cache = Path(os.environ.get("MASKSTREAM_CACHE") or Path.home() / ".cache" / "maskstream") / "kernels"
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(SOURCE.read_bytes() + repr(FLAG_SETS).encode() + _cpu_flags().encode()
                         + " ".join(tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()).encode())
    path = cache / f"winograd-tf{tf.__version__}-{key.hexdigest()[:16]}.so"
    with open(cache / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # another process may be building it: wait, then use its file
        if not path.exists():
            _build(path)
    return path


def _build(path: Path) -> None:
    """Compile SOURCE into `path` (through a temporary file: a crash leaves no half library)."""
    part = path.with_suffix(f".{os.getpid()}.part")
    error = "no flags tried"
    for flags in FLAG_SETS:
        command = [os.environ.get("CXX", "g++"), "-shared", "-fPIC", *flags, *tf.sysconfig.get_compile_flags(),
                   str(SOURCE), "-o", str(part), *tf.sysconfig.get_link_flags()]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as failure:
            raise OSError(f"cannot build {SOURCE.name}: {failure}") from None
        if done.returncode == 0:
            part.replace(path)
            return
        error = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[-200:])
    part.unlink(missing_ok=True)
    raise OSError(f"cannot build {SOURCE.name}: {error}")


def _cpu_flags() -> str:
    try:
        return next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return ""

"""Winograd F(2x2, 3x3) for the 3x3 stride-1 convolutions at float32 inference on the CPU.

A 3x3 convolution computed on 4x4 input tiles, each giving a 2x2 output tile, takes 16
multiplications per tile and channel pair instead of 36: the input tiles are transformed
(`WinogradInput`, B^T d B), multiplied by the transformed kernels (G g G^T, computed once in
float64 per model) as 16 matrix products (tiles x C) @ (C x K), one batched `tf.linalg.matmul`
that oneDNN runs near the machine's matmul rate, and transformed back (`WinogradOutput`, A^T m A,
with the bias and ReLU). On this machine it is 1.25-1.66x oneDNN's direct convolution on the
ResNet-50-FPN's 3x3 shapes with 128 or more channels (0.86x at 64) and the whole model 1.5x
(bench/winograd.py, bench/model.py). Its outputs differ from the exact convolution's less than
the direct convolution's do (5-9e-7 of their largest value against 1.5-2.7e-6). F(4x4, 3x3), which the op
also computes (`TILE` 4), is faster still (the model 1.8x) but 7-9x less exact than the direct
convolution: torchvision v2's parity reference then moves a score by 1.06e-3, past the 1e-3
its parity allows, so it is not used.

The two transforms are a TensorFlow custom op, `kernels/winograd.cc`, compiled here on first use
with the C++ compiler (`CXX`, else `g++`) against the installed TensorFlow and cached (one file
per TensorFlow version, source, flags and CPU, under `$MASKSTREAM_CACHE` or
`~/.cache/maskstream`; a file lock keeps workers starting together from compiling it twice).
Where it cannot be built (no compiler, another platform) the model uses the direct convolution
and `unavailable()` says why in one line; so does a process whose TensorFlow has a GPU (the op
is the CPU's). `MASKSTREAM_WINOGRAD=0` turns it off. Training and bfloat16 always use the
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
TILE = 2                   # output tile side m: F(m x m, 3 x 3) on (m + 2) x (m + 2) input tiles
ALPHA = TILE + 2
# G, the kernel transform, of F(2, 3) and F(4, 3) (Lavin and Gray, 2016).
KERNEL_TRANSFORMS = {2: np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]]),
                     4: np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])}
# g++ 12 with -march=native on CPUs with AVX512-FP16 cannot compile TensorFlow's own Eigen headers.
FLAG_SETS = (["-O3", "-march=native", "-mno-avx512fp16"], ["-O3", "-march=native"])

_ops = None
_reason: str | None = None


def transform_kernel(kernel: np.ndarray) -> np.ndarray:
    """(3, 3, C, K) kernel -> (ALPHA * ALPHA, C, K) float32, G g G^T per channel pair (in float64)."""
    g = KERNEL_TRANSFORMS[TILE]
    u = np.einsum("ir,rsck,js->ijck", g, np.asarray(kernel, np.float64), g)
    return u.reshape(ALPHA * ALPHA, kernel.shape[2], kernel.shape[3]).astype(np.float32)


def conv3x3(x: tf.Tensor, transformed: tf.Tensor, bias: tf.Tensor, relu: bool = False) -> tf.Tensor:
    """(B, H, W, C) float32 -> (B, H, W, K): the 3x3 stride-1 'SAME' convolution of the kernel
    whose `transform_kernel` is `transformed` (ALPHA * ALPHA, C, K), plus `bias` (K,), ReLU'd if
    `relu`. Needs `available()`."""
    products = tf.linalg.matmul(_ops.winograd_input(x, m=TILE), transformed)     # (ALPHA^2, tiles, K)
    y = _ops.winograd_output(products, tf.shape(x)[:3], tf.cast(bias, tf.float32), m=TILE, relu=relu)
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

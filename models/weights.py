"""The project's own weights format: one `.npz` holding every parameter by name plus a JSON
record of what architecture they belong to. Reading it needs only numpy.

A file that is missing, not an npz, or made for another architecture raises WeightsError with
one line naming the file and the first key that is missing or mis-shaped.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from .errors import WeightsError

FORMAT = "maskstream.weights/1"
META_KEY = "__meta__"


def save_weights(path: str | Path, params: dict, meta: dict | None = None) -> Path:
    """Write `params` (name -> array or tf.Variable) and `meta` (JSON-able) to an .npz file."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.asarray(value, dtype=np.float32) for name, value in params.items()}
    record = {"format": FORMAT, **(meta or {})}
    arrays[META_KEY] = np.frombuffer(json.dumps(record).encode(), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def read_weights(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(params, meta) from a weights file, without checking them against an architecture."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise WeightsError(f"{path}: not a maskstream weights file ({type(e).__name__}: {e})") from None
    if META_KEY not in arrays:
        raise WeightsError(f"{path}: not a maskstream weights file (no {META_KEY} record)")
    meta = json.loads(arrays.pop(META_KEY).tobytes().decode())
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: unknown weights format {meta.get('format')!r}, expected {FORMAT}")
    return arrays, meta


def check_params(params: dict[str, np.ndarray], shapes: dict[str, tuple], source: str) -> None:
    """Raise WeightsError naming the first parameter that is missing, mis-shaped or unexpected."""
    for name in sorted(shapes):
        if name not in params:
            raise WeightsError(f"{source}: missing parameter {name} {tuple(shapes[name])}: "
                               "the weights are for another architecture")
        if tuple(params[name].shape) != tuple(shapes[name]):
            raise WeightsError(f"{source}: parameter {name} has shape {tuple(params[name].shape)}, "
                               f"the configuration needs {tuple(shapes[name])}")
    extra = sorted(set(params) - set(shapes))
    if extra:
        raise WeightsError(f"{source}: unexpected parameter {extra[0]} (and {len(extra) - 1} more): "
                           "the weights are for another architecture")


def load_weights(path: str | Path, shapes: dict[str, tuple]) -> tuple[dict[str, np.ndarray], dict]:
    """Read a weights file and check it against the parameter shapes of an architecture."""
    params, meta = read_weights(path)
    check_params(params, shapes, str(path))
    return params, meta

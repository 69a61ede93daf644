"""The project's own weights format: one `.npz` holding every parameter by name plus a JSON
record of the model they belong to. Reading it needs only numpy.

The record holds the full configuration the weights were trained or converted with
(`{"made_by": "training" | "conversion" | "saved", "config": ModelConfig.to_dict(),
"config_file": its YAML or null}`); files written before that record only `name`,
`class_names` and `backbone` {depth, width}, and still load.

A file that is missing or not an npz raises WeightsError with one line naming it; weights that do
not fit a configuration, one line naming both and the first parameter that differs:
"W.npz (trained with NAME: ResNet-18 width 32, 4 classes) does not fit C.yaml: backbone/conv1/kernel
is (7, 7, 3, 32) there, (7, 7, 3, 16) here".
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from .errors import WeightsError

FORMAT = "maskstream.weights/1"
META_KEY = "__meta__"
MADE_BY = {"training": "trained with", "conversion": "converted with", "saved": "saved with"}


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


def describe_record(meta: dict) -> str:
    """What a weights file says it was made with, for messages: "trained with NAME: ResNet-18 width 32,
    4 classes" ("made for ..." in files that do not record how they were made)."""
    recorded = meta.get("config", meta)
    name, backbone, classes = recorded.get("name"), recorded.get("backbone") or {}, recorded.get("class_names")
    if name is None and not backbone and classes is None:
        return "no recorded configuration"
    parts = []
    if "depth" in backbone:
        parts.append(f"ResNet-{backbone['depth']}" + (f" width {backbone['width']}" if "width" in backbone else ""))
    if classes is not None:
        parts.append(f"{len(classes)} classes")
    return f"{MADE_BY.get(meta.get('made_by'), 'made for')} {name or 'a model'}" + (f": {', '.join(parts)}" if parts else "")


def first_mismatch(params: dict[str, np.ndarray], shapes: dict[str, tuple]) -> str | None:
    """The first difference between parameters and an architecture's shapes (in the architecture's
    order), as a phrase where "there" is `params` and "here" the architecture; None when they fit."""
    for name, shape in shapes.items():
        if name not in params:
            return f"missing parameter {name} {tuple(shape)}"
        if tuple(params[name].shape) != tuple(shape):
            return f"{name} is {tuple(params[name].shape)} there, {tuple(shape)} here"
    extra = sorted(set(params) - set(shapes))
    if extra:
        return f"unexpected parameter {extra[0]} (and {len(extra) - 1} more)"
    return None


def load_weights(path: str | Path, shapes: dict[str, tuple], target: str = "this configuration"
                 ) -> tuple[dict[str, np.ndarray], dict]:
    """Read a weights file and check it against the parameter shapes of an architecture; `target`
    names the configuration in the one-line WeightsError when they do not fit."""
    params, meta = read_weights(path)
    problem = first_mismatch(params, shapes)
    if problem:
        raise WeightsError(f"{path} ({describe_record(meta)}) does not fit {target}: {problem}")
    return params, meta

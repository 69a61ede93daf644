"""Pipeline configuration: typed sections loaded from YAML, overridable from the command line.

The embedded default is configs/default.yaml; a user's YAML is laid over it (sections merge key
by key, lists are replaced), then `--set section.key=value` overrides (the value is read as YAML:
`4`, `true`, `null`, `[a, b]`).
Validation reuses the model's generic dataclass loader, so a mistake is one `ConfigError` line
naming the key. Relative paths inside a YAML file are taken from that file's folder; paths given
on the command line are taken from the current directory; all are made absolute on load.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.config import CONFIG_VERSION, check_version, from_dict, read_yaml, require, set_dotted, validate_sections
from models.errors import ConfigError

from .sources import source_kind, split_spec
from .tracking import TrackingConfig
from .zones import ZoneConfig, validate_zones

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"

MODES = ("auto", "offline", "live")
DEVICES = ("auto", "gpu", "cpu")
PRECISIONS = ("auto", "model", "float32", "bfloat16")
IMAGES = ("none", "jpeg")


@dataclass
class ModelSection:
    config: str | None = None          # model YAML (see models/config.py)
    weights: str | None = None         # weights file; none: seeded random weights
    score_threshold: float | None = None  # publish instances scoring above this; none: the model's own
    classes: list[str] | None = None   # detect and publish only these class names; none: every class
    # (the others are dropped inside the model, before NMS: they cost no mask, see box_head.classes)
    # (with tracking on, the workers keep detections down to tracking.low_score, at most this: weaker
    # ones that continue a track are published too, see pipeline/tracking.py TrackingStage)

    def validate(self, path: str) -> None:
        require(self.config is not None, path + ".config", "needs the model's YAML file")
        require(self.score_threshold is None or 0 <= self.score_threshold < 1, path + ".score_threshold",
                 "must be in [0, 1)")


@dataclass
class SourcesSection:
    uris: list[str] = field(default_factory=lambda: ["synthetic:"])  # URI or id=URI, one per stream
    mode: str = "auto"                 # auto: live if any source is a camera or network stream
    max_frames: int = 0                # per stream, 0 reads to the end
    folder_fps: float = 25.0           # image folders: pts advances 1/folder_fps per image
    open_timeout_s: float = 10.0       # network streams: give up opening or reading after this
    reconnect_initial_s: float = 0.5   # live: first back-off after a stream fails
    reconnect_max_s: float = 10.0      # live: back-off doubles up to this
    read_ahead: int = 8                # offline: decoded frames waiting per stream (reader blocks beyond)
    live_queue: int = 1                # live: newest frames kept per stream while inference is busy
    max_restarts: int = 2              # Ray restarts a crashed ingest actor this often (it resumes the stream)
    max_open: int = 8                  # offline: streams read at once (an ingest process each); the others wait
                                       # their turn in order, opened as earlier ones finish; 0: all at once.
                                       # Live runs open every source.

    def validate(self, path: str) -> None:
        require(len(self.uris) > 0, path + ".uris", "needs at least one source")
        require(self.max_open >= 0, path + ".max_open", "must be >= 0 (0 opens every stream at once)")
        require(self.mode in MODES, path + ".mode", f"must be one of {', '.join(MODES)}")
        require(self.max_frames >= 0, path + ".max_frames", "must be >= 0 (0 reads to the end)")
        require(self.folder_fps > 0, path + ".folder_fps", "must be positive")
        require(self.open_timeout_s > 0, path + ".open_timeout_s", "must be positive")
        require(0 < self.reconnect_initial_s <= self.reconnect_max_s, path,
                 "need 0 < reconnect_initial_s <= reconnect_max_s")
        require(self.read_ahead >= 1, path + ".read_ahead", "must be >= 1")
        require(self.live_queue >= 1, path + ".live_queue", "must be >= 1")
        require(self.max_restarts >= 0, path + ".max_restarts", "must be >= 0")


@dataclass
class WorkersSection:
    count: int = 0                     # inference actors; 0: one per GPU in the cluster, else 1
    device: str = "auto"               # auto: GPUs when the cluster has them
    cpus: float | str = "auto"         # auto: a node's cores (less ingest's) split between its workers; a number:
                                       # the CPUs Ray reserves per worker, rounded its TensorFlow thread count
    precision: str = "auto"            # auto: bfloat16 on CPUs with native bfloat16, else as the model config says;
                                       # model: as the model config says; float32; bfloat16
    max_restarts: int = 2              # Ray restarts a crashed worker this often
    max_task_retries: int = 0          # Ray re-runs a crashed worker's batch there this often; 0: the scheduler
                                       # re-runs it at once on any live worker (a lost node's restart may never come)

    def validate(self, path: str) -> None:
        require(self.count >= 0, path + ".count", "must be >= 0 (0 picks one per GPU, else 1)")
        require(self.device in DEVICES, path + ".device", f"must be one of {', '.join(DEVICES)}")
        require(self.cpus == "auto" or (not isinstance(self.cpus, str) and self.cpus > 0), path + ".cpus",
                "must be auto or a positive number")
        require(self.precision in PRECISIONS, path + ".precision", f"must be one of {', '.join(PRECISIONS)}")
        require(self.max_restarts >= 0 and self.max_task_retries >= 0, path, "restarts and retries must be >= 0")


@dataclass
class BatchingSection:
    max_batch: int = 4                 # frames per inference call, across streams
    max_wait_ms: float = 10.0          # a partial batch waits at most this for more frames
    max_in_flight: int = 0             # offline: frames accepted but not yet published; 0: 3 batches per worker
    batches_per_worker: int = 2        # offline: batches queued on a worker so it never idles

    def validate(self, path: str) -> None:
        require(self.max_batch >= 1, path + ".max_batch", "must be >= 1")
        require(self.max_wait_ms >= 0, path + ".max_wait_ms", "must be >= 0")
        require(self.max_in_flight >= 0, path + ".max_in_flight", "must be >= 0")
        require(self.batches_per_worker >= 1, path + ".batches_per_worker", "must be >= 1")


@dataclass
class PublishSection:
    endpoint: str = "tcp://127.0.0.1:5555"
    hwm: int = 1000                    # messages queued per subscriber before ZeroMQ drops (0: no limit)
    sndbuf: int = 0                    # bytes of TCP send buffer per subscriber; 0: the OS's (megabytes, beyond hwm)
    curve_keys: str | None = None      # key directory (maskstream keys); none: plain TCP
    linger_ms: int = 1000              # at the end, how long unsent messages may still go out (-1: until
    #                                    sent); offline at least stall_timeout_s
    images: str = "none"               # jpeg: each frame's pixels travel as a third message part
    jpeg_quality: int = 85             # of those JPEGs, 1-100
    image_max_side: int | None = None  # shrink them so the longer side is at most this; none: frame size
    wait_subscribers: int = 0          # hold each stream's first frame until this many subscribers cover it
    wait_timeout_s: float = 60.0       # ...and stop the run if they have not come by then
    stall_timeout_s: float = 30.0      # offline: a subscriber that takes nothing this long is dropped for
    max_restarts: int = 2              # Ray restarts a crashed publisher this often (it resumes where it was)

    def validate(self, path: str) -> None:
        require("://" in self.endpoint, path + ".endpoint", "must look like tcp://HOST:PORT")
        require(self.hwm >= 0, path + ".hwm", "must be >= 0")
        require(self.sndbuf >= 0, path + ".sndbuf", "must be >= 0 (0: the operating system's default)")
        require(self.linger_ms >= -1, path + ".linger_ms", "must be >= 0, or -1 to wait until sent")
        require(self.images in IMAGES, path + ".images", f"must be one of {', '.join(IMAGES)}")
        require(1 <= self.jpeg_quality <= 100, path + ".jpeg_quality", "must be 1-100")
        require(self.image_max_side is None or self.image_max_side >= 1, path + ".image_max_side",
                "must be >= 1 (or null: the frame's own size)")
        require(self.wait_subscribers >= 0, path + ".wait_subscribers", "must be >= 0")
        require(self.wait_timeout_s > 0, path + ".wait_timeout_s", "must be positive")
        require(self.stall_timeout_s > 0, path + ".stall_timeout_s", "must be positive")
        require(self.max_restarts >= 0, path + ".max_restarts", "must be >= 0")


@dataclass
class OutputSection:
    dir: str | None = None             # file sinks (JSON lines, COCO results); none: no files
    overlay: bool = False              # also an overlay video per stream (needs dir)
    overlay_fps: float | None = None   # the overlay video's frame rate; none: the source's own
    skip_done: bool = False            # pass over the streams whose files in dir are complete from an earlier
                                       # run (<stream>.eos.json says reason end): an archive run resumed

    def validate(self, path: str) -> None:
        require(not self.overlay or self.dir is not None, path + ".overlay", "needs output.dir")
        require(not self.skip_done or self.dir is not None, path + ".skip_done", "needs output.dir")
        require(self.overlay_fps is None or self.overlay_fps > 0, path + ".overlay_fps",
                "must be positive (or null: the source's own frame rate)")


@dataclass
class PipelineConfig:
    version: int = CONFIG_VERSION      # of this file's format; a file of another version is refused
    model: ModelSection = field(default_factory=ModelSection)
    sources: SourcesSection = field(default_factory=SourcesSection)
    workers: WorkersSection = field(default_factory=WorkersSection)
    batching: BatchingSection = field(default_factory=BatchingSection)
    publish: PublishSection = field(default_factory=PublishSection)
    output: OutputSection = field(default_factory=OutputSection)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # object identities (pipeline/tracking.py)
    zones: list[ZoneConfig] = field(default_factory=list)  # regions and counting lines (pipeline/zones.py)
    metrics_port: int | None = None    # serve Prometheus metrics on this port
    metrics_host: str = "127.0.0.1"    # the address the metrics are served on (0.0.0.0: every interface)
    ray_address: str | None = None     # join this Ray cluster; none: start a local one
    verbose: bool = False
    progress: bool = True              # progress bars for offline streams (on a terminal)

    def validate(self, path: str = "config") -> None:
        check_version(self.version, path)
        validate_sections(self, path)
        validate_zones(self.zones, self.tracking.enabled, path + ".zones")
        require(self.metrics_port is None or 0 < self.metrics_port < 65536, path + ".metrics_port",
                 "must be a TCP port (1-65535)")


# Keys holding file paths: a relative path in a YAML file means "next to that file".
PATH_KEYS = (("model", "config"), ("model", "weights"), ("publish", "curve_keys"), ("output", "dir"))


def load_pipeline_config(path: str | Path | None = None, overrides: list[str] = ()) -> PipelineConfig:
    """The validated config: the embedded default, then the YAML at `path`, then `key=value` overrides.

    Overrides are dotted keys (`batching.max_batch=8`); their paths stay relative to the
    current directory. Raises ConfigError with one line for the first mistake.
    """
    data = _read_layer(DEFAULT_CONFIG)
    from_file = None
    if path is not None:
        merge(data, _read_layer(path))
        try:   # an unknown key or a value of the wrong type in the file: named with the file
            from_file = from_dict(PipelineConfig, copy.deepcopy(data), "config")
        except ConfigError as error:
            raise ConfigError(f"{path}: {str(error).removeprefix('config.')}") from None
    for override in overrides:
        set_dotted(data, override)
    # Absolute paths: actors do not share the driver's current directory (nor, on other nodes, its disk).
    resolve_paths(data, Path.cwd())
    config = from_dict(PipelineConfig, data, "config")
    try:
        config.validate("config")
    except ConfigError as error:
        if from_file is not None and _same_mistake(from_file, error):  # the file's own, not the command line's
            raise ConfigError(f"{path}: {str(error).removeprefix('config.')}") from None
        raise
    return config


def _same_mistake(config: PipelineConfig, error: ConfigError) -> bool:
    """Whether `config` (the default and the file, without the command line's settings) fails
    validation with the very same `error`."""
    try:
        config.validate("config")
    except ConfigError as own:
        return str(own) == str(error)
    return False


def _read_layer(path: str | Path) -> dict:
    """A YAML mapping whose relative file paths are made absolute from the file's folder."""
    data = read_yaml(path)
    resolve_paths(data, Path(path).resolve().parent)
    return data


def resolve_paths(data: dict, base: Path) -> None:
    """Make the relative file paths of a config mapping (PATH_KEYS and file sources) absolute from `base`."""
    for section, key in PATH_KEYS:
        node = data.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str) and not Path(node[key]).is_absolute():
            node[key] = str(base / node[key])
    sources = data.get("sources")
    if isinstance(sources, dict) and isinstance(sources.get("uris"), list):
        sources["uris"] = [_resolve_source(spec, base) for spec in sources["uris"]]


def _resolve_source(spec: Any, base: Path) -> Any:
    """A file or folder source of a YAML file, made absolute; other URIs as they are."""
    if not isinstance(spec, str):
        return spec
    stream_id, uri = split_spec(spec)
    if source_kind(uri) in ("file", "folder") and not Path(uri).is_absolute():
        uri = str(base / uri)
    return uri if stream_id is None else f"{stream_id}={uri}"


def merge(base: dict, layer: dict) -> None:
    """Lay mapping `layer` over `base` in place: nested mappings merge, other values replace."""
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value

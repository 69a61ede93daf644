"""Frame sources: video files, image folders, cameras, network streams and generated scenes.

Every source yields `DecodedFrame`s of RGB uint8 (H, W, 3) pixels with a presentation time `pts`
in seconds on the source's own clock, and says its frame rate (`fps`). Grayscale, 4-channel and
16-bit images are converted; any frame size is fine. A container's frame count is only a hint for
progress bars: sources read until decoding stops (a header may count frames that are not there:
the pedestrian clip claims 682 at 50 fps and holds 341 at 25, over the same 13.6 s). A file is
judged truncated by time, when decoding stops well before the duration its header declares.

Damaged data in the middle of a file does not end it: the frames that do not decode are passed
over, and the next frame that decodes says how many were (`DecodedFrame.skipped`, from the jump
in its timestamp) and why. An image in a folder that cannot be read is passed over the same way.
Sources that can, `seek` to a frame: the ingest resumes a stream there after a crash.

A source that cannot be opened raises `SourceError` with one line naming the input.
"""
from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# FFmpeg prints decoder complaints (a truncated file, a refused connection) straight to stderr;
# the pipeline reports such problems itself, in one line. Read when a capture opens.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
import cv2  # noqa: E402

from models.errors import SourceError

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

log = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
SYNTHETIC_PREFIX = "synthetic:"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm"}
LIVE_KINDS = ("camera", "network")
# The frame rate of a camera or video that does not say its own (pts then steps by 1/FALLBACK_FPS).
FALLBACK_FPS = 25.0
# A file whose frames fail to decode this many times in a row has ended (damaged data in the
# middle of a file fails a few reads, then decoding goes on; at the end every read fails at once).
MAX_FAILED_READS = 250


@dataclass(frozen=True)
class SourceSpec:
    """One stream: its id, its URI and what kind of source the URI names."""
    stream_id: str
    uri: str
    kind: str  # file | folder | camera | network | synthetic

    @property
    def live(self) -> bool:
        """Whether frames arrive at the source's own pace (cameras, network streams)."""
        return self.kind in LIVE_KINDS


@dataclass
class DecodedFrame:
    """A frame as a source gives it, before the pipeline describes it (pipeline.protocol.FrameRecord)."""
    rgb: np.ndarray  # (H, W, 3) uint8
    pts: float       # seconds, source clock
    skipped: int = 0               # frames of the source right before this one that could not be read
    skip_reason: str | None = None  # why, in a few words


def source_kind(uri: str) -> str:
    """What kind of source `uri` names: file, folder, camera, network or synthetic."""
    if uri.startswith(SYNTHETIC_PREFIX):
        return "synthetic"
    if uri.isdigit():
        return "camera"
    if uri.lower().startswith(NETWORK_SCHEMES):
        return "network"
    return "folder" if Path(uri).is_dir() else "file"


def split_spec(spec: str) -> tuple[str | None, str]:
    """`id=URI` -> (id, URI); a plain URI -> (None, URI). An id has no ':' or '/'."""
    name, sep, uri = spec.partition("=")
    if sep and name and re.fullmatch(r"[\w.-]+", name):
        return name, uri
    return None, spec


def expand_pattern(spec: str) -> list[str]:
    """A `--source` value with a shell pattern (`clips/*.mp4`, `day?/cam[12]/`) that names no
    path as it is -> the paths it matches, sorted, one stream each (ids from their names); any
    other value -> [spec]. SourceError when it matches nothing, or when it has an `id=` (one id
    cannot name several streams)."""
    stream_id, uri = split_spec(spec)
    if source_kind(uri) not in ("file", "folder") or not glob.has_magic(uri) or Path(uri).exists():
        return [spec]
    if stream_id is not None:
        raise SourceError(f"source {spec!r}: a pattern gives a stream per file, named after it; drop {stream_id}=")
    matches = sorted(glob.glob(uri))
    if not matches:
        raise SourceError(f"{uri}: no file matches this pattern")
    return matches


def parse_source(spec: str) -> SourceSpec:
    """The stream of a `--source` value: `URI` or `id=URI`; the id defaults to one from the URI."""
    stream_id, uri = split_spec(spec)
    if not uri:
        raise SourceError(f"source {spec!r}: empty URI")
    kind = source_kind(uri)
    return SourceSpec(stream_id or default_stream_id(uri, kind), uri, kind)


def default_stream_id(uri: str, kind: str) -> str:
    """A readable stream id from a URI: file stem, folder name, cam<N>, host_path, synthetic."""
    if kind == "camera":
        return f"cam{uri}"
    if kind == "synthetic":
        return "synthetic"
    if kind == "network":
        name = uri.split("://", 1)[1].split("?", 1)[0]
    else:
        path = Path(uri)
        name = path.name if kind == "folder" else path.stem
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or kind


def to_rgb(image: np.ndarray, source: str) -> np.ndarray:
    """An OpenCV image (gray (H, W) or (H, W, 1), BGR, BGRA; uint8 or 16-bit) as RGB uint8 (H, W, 3)."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise SourceError(f"{source}: unsupported pixel type {image.dtype}")
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: the decoder's array is ours
    raise SourceError(f"{source}: unsupported image with {image.shape[2]} channels")


class FrameSource:
    """Base of the sources: `read()` gives the next DecodedFrame, or None at the end; `fps` is
    the source's frame rate (its own, or FALLBACK_FPS when it does not say).

    `decode_into(array)` offers an RGB uint8 (H, W, 3) array for the next `read()` to decode
    into (the ingest offers the next slot of the block it puts into the object store), which
    spares allocating (and page-faulting) a fresh frame and copying it. Sources that cannot
    decode in place ignore it, and a frame of another size is decoded into a new array.
    """
    total: int | None = None  # frames expected, when known; a hint only
    fps: float = FALLBACK_FPS

    def read(self) -> DecodedFrame | None:
        raise NotImplementedError

    def decode_into(self, array: np.ndarray | None) -> None:
        """Offer `array` (contiguous RGB uint8) for the next frame; it may be left untouched."""

    def seek(self, index: int) -> bool:
        """Make frame `index` (counting frames passed over) the next one read, if this source can
        jump there; False if it cannot (the caller then reads and drops frames up to it)."""
        return False

    def close(self) -> None:
        """Release the device, file or connection."""


def missing_file(spec: SourceSpec) -> str | None:
    """The one-line error of a file source whose file is not there, else None (any other source)."""
    if spec.kind == "file" and not Path(spec.uri).is_file():
        return f"{spec.uri}: no such file"
    return None


class CaptureSource(FrameSource):
    """A video file, a camera or a network stream, decoded by OpenCV (FFmpeg for files and URLs).

    pts comes from the stream's timestamps; where those do not advance (some cameras, the
    last frame of some containers) it steps by 1/fps from the previous frame. `fps` is the rate of
    the first two timestamps, which can differ from the header's (the pedestrian clip's header
    says 50, its frames come at 25); the header's rate where they do not advance.
    """

    def __init__(self, spec: SourceSpec, open_timeout_s: float = 10.0):
        self.spec = spec
        if (missing := missing_file(spec)) is not None:
            raise SourceError(missing)
        self._capture = self._open(spec, open_timeout_s)
        if not self._capture.isOpened():
            raise SourceError(self._failure("cannot open"))
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self._step = 1.0 / (fps if 0 < fps < 1000 else FALLBACK_FPS)
        self._last_pts: float | None = None
        self._spare: np.ndarray | None = None  # the array offered for the next frame
        self._declared_s = None  # a file's duration by its header: frame count / frame rate
        if spec.kind == "file":
            count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
            self.total = count if count > 0 else None
            if count > 0 and 0 < fps < 1000:
                self._declared_s = count / fps
        first = self._decode()
        if first is None:
            self.close()
            raise SourceError(self._failure("no decodable frame"))
        second = self._decode()
        self._ahead = [first] if second is None else [first, second]  # read() gives them first
        self.fps = round(1.0 / (self._step if second is None else second.pts - first.pts), 3)

    @staticmethod
    def _open(spec: SourceSpec, timeout_s: float) -> cv2.VideoCapture:
        if spec.kind == "camera":
            return cv2.VideoCapture(int(spec.uri))
        timeout_ms = int(timeout_s * 1000)
        return cv2.VideoCapture(spec.uri, cv2.CAP_FFMPEG,
                                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])

    def _failure(self, what: str) -> str:
        reasons = {"file": "not a video, or damaged", "camera": "no such camera, or busy",
                   "network": "unreachable, or not a video stream"}
        return f"{self.spec.uri}: {what} ({reasons[self.spec.kind]})"

    def decode_into(self, array: np.ndarray | None) -> None:
        self._spare = array

    def _decode(self) -> DecodedFrame | None:
        spare, self._spare = self._spare, None
        ok, image = self._capture.read(spare) if spare is not None else self._capture.read()
        if not ok or image is None:
            return None
        pts = self._capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if self._last_pts is not None and not pts > self._last_pts:
            pts = self._last_pts + self._step
        self._last_pts = pts
        return DecodedFrame(to_rgb(image, self.spec.uri), pts)

    def read(self) -> DecodedFrame | None:
        """The next frame; None at the end. A file whose decoding stops well before the duration
        its header declares raises SourceError (truncated or damaged) after its last good frame;
        frames that fail to decode before the end are passed over (see the module docstring)."""
        if self._ahead:  # read at opening
            return self._ahead.pop(0)
        last_pts = self._last_pts
        frame, failed = self._decode(), 0
        while frame is None and self.spec.kind == "file" and failed < MAX_FAILED_READS:
            failed += 1
            frame = self._decode()
        if frame is not None and last_pts is not None:
            frame.skipped = max(0, round((frame.pts - last_pts) * self.fps) - 1)  # fps: the frames' own rate
            if frame.skipped:
                frame.skip_reason = "not decodable (damaged data)" if failed else "missing from the file"
        if frame is None and self._declared_s is not None and self._last_pts + 2 * self._step < self._declared_s:
            raise SourceError(f"{self.spec.uri}: decoding stopped at {self._last_pts:.2f} s of the "
                              f"{self._declared_s:.2f} s its header declares (truncated or damaged file)")
        return frame

    def close(self) -> None:
        self._capture.release()


class ImageFolderSource(FrameSource):
    """The images of a folder, sorted by file name; pts advances by 1/fps per image.

    An image that cannot be read is skipped with a warning naming it.
    """

    def __init__(self, spec: SourceSpec, fps: float):
        self.spec = spec
        self._paths = sorted(p for p in Path(spec.uri).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._paths:
            raise SourceError(f"{spec.uri}: no images in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.total = len(self._paths)
        self.fps = fps
        self._next = 0

    def read(self) -> DecodedFrame | None:
        skipped = 0
        while self._next < len(self._paths):
            index, path = self._next, self._paths[self._next]
            self._next += 1
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                log.warning("%s: not a readable image, skipped", path)
                skipped += 1
                continue
            return DecodedFrame(to_rgb(image, str(path)), index / self.fps, skipped,
                                "not readable images" if skipped else None)
        return None

    def seek(self, index: int) -> bool:
        self._next = index
        return True


SYNTHETIC_DEFAULTS = {"seed": 0, "width": 640, "height": 360, "fps": 25.0, "frames": 300}


def parse_synthetic(uri: str) -> dict:
    """`synthetic:seed=1,width=320,height=240,fps=25,frames=100` -> its parameters, defaults filled."""
    params = dict(SYNTHETIC_DEFAULTS)
    body = uri[len(SYNTHETIC_PREFIX):]
    for item in filter(None, body.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in params:
            raise SourceError(f"{uri}: expected key=value with keys {', '.join(params)}, got {item!r}")
        try:
            params[key] = type(params[key])(value)
        except ValueError:
            raise SourceError(f"{uri}: {key}={value!r} is not a number") from None
    if params["width"] < 32 or params["height"] < 32 or params["fps"] <= 0 or params["frames"] < 1:
        raise SourceError(f"{uri}: need width and height >= 32, fps > 0, frames >= 1")
    return params


class SyntheticSource(FrameSource):
    """Generated moving street scenes (models.data.scenes.StreetScene), `frames` of them at `fps`."""

    def __init__(self, spec: SourceSpec):
        from models.data.scenes import StreetScene

        params = parse_synthetic(spec.uri)
        self._scene = StreetScene(seed=params["seed"], width=params["width"], height=params["height"])
        self.fps = params["fps"]
        self.total = params["frames"]
        self._next = 0

    def read(self) -> DecodedFrame | None:
        if self._next >= self.total:
            return None
        rgb, _instances = self._scene.frame(self._next)
        self._next += 1
        return DecodedFrame(rgb, (self._next - 1) / self.fps)

    def seek(self, index: int) -> bool:
        self._next = index
        return True


def open_source(spec: SourceSpec, folder_fps: float = 25.0, open_timeout_s: float = 10.0) -> FrameSource:
    """Open the source of `spec`; raises SourceError naming the input if it cannot be read."""
    if spec.kind == "folder":
        return ImageFolderSource(spec, folder_fps)
    if spec.kind == "synthetic":
        return SyntheticSource(spec)
    return CaptureSource(spec, open_timeout_s)

"""File sinks: the lossless record of what was published.

Per stream, under the output directory:

- ``<stream>.jsonl``: one line per frame, byte for byte the wire header (``protocol.encode_header``);
- ``<stream>.coco_results.json``: COCO results, one entry per instance: ``image_id``,
  ``category_id`` (the instance's ``class_id``), ``segmentation`` (compressed RLE), ``bbox``
  ([x, y, width, height] pixels) and ``score``;
- ``<stream>.coco_images.json``: the images those results refer to, in COCO ground-truth form, so
  ``COCO(images_file).loadRes(results_file)`` works. A frame's ``image_id`` is its ``seq`` (unique
  and gap-free per stream even when frames are dropped or a camera is reopened); each image entry
  also carries ``stream``, ``seq``, ``frame_index`` (position in the source) and ``pts``.
  Categories are ``{id: class_id, name: label}``. With tracking, each result also has the
  instance's ``track_id``;
- with tracking, ``<stream>.mots.txt`` (KITTI MOTS / MOTS Challenge: ``frame id class_id height
  width rle``, each pixel in at most one mask, the higher score's) and ``<stream>.mot.txt``
  (MOTChallenge: ``frame,id,x,y,w,h,score,-1,-1,-1``): the instances in a track (``track_id``
  > 0), frame = ``seq`` + 1;
- ``<stream>.overlay.mp4`` (optional): the frames with coloured masks, boxes, labels and scores
  (with tracking, a colour per track and its ``#id``);
- ``<stream>.eos.json``: the stream's EOS header as on the wire, written once every other file
  of the stream is complete: a stream whose ``reason`` is ``end`` was done
  (``maskstream run --skip-done`` passes over it).

Every sink takes ``pipeline.protocol.FrameRecord``s as published. A file that cannot be written
is a one-line ``SinkError`` naming it.

A publisher that restarts after a crash reopens a stream's sinks with ``resume_at`` (the first
seq it will publish again): the JSON lines are cut back to the complete lines before that seq (a
line half-written at the crash goes too), the COCO results are rebuilt from them, and the overlay
video, which a killed writer leaves unfinished, continues in ``<stream>.overlay.from<seq>.mp4``.
"""
import json
from pathlib import Path

import cv2
import numpy as np

from models.data.mots import TrackedFrame, mot_lines, mots_lines, without_overlaps
from models.errors import SinkError

from .overlay import draw_zones, render_frame
from .protocol import EndOfStream, FrameRecord, encode_header
from .zones import zone_figures

FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".avi": "MJPG"}


def _open(path: Path, mode: str):
    try:
        return open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    except OSError as error:
        raise SinkError(f"output file {path}: {error.strerror}") from None


class JsonlSink:
    """Writes one header per line, exactly as encoded on the wire, flushed per frame."""

    def __init__(self, path: str | Path):
        self._file = _open(Path(path), "wb")

    @classmethod
    def resumed(cls, path: str | Path, resume_at: int) -> tuple["JsonlSink", list[bytes]]:
        """The sink of a file written before a crash, cut back to its complete lines of seq below
        ``resume_at``, appending after them; and those lines."""
        path = Path(path)
        kept, size = [], 0
        if path.is_file():
            with _open(path, "rb") as file:
                for line in file:
                    if not line.endswith(b"\n") or json.loads(line)["seq"] >= resume_at:
                        break
                    kept.append(line[:-1])
                    size += len(line)
        sink = cls.__new__(cls)
        sink._file = _open(path, "ab" if path.is_file() else "wb")
        sink._file.truncate(size)
        return sink, kept

    def write(self, record: FrameRecord) -> None:
        self._file.write(encode_header(record) + b"\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class CocoResultsSink:
    """Streams COCO results to ``results_path``; writes the images file on close.

    Results are written as they come (memory stays flat over long videos); the images list is
    small and written at the end, with the categories seen plus any of ``class_names``
    (``class_names[class_id]`` is that class's label).
    """

    def __init__(self, results_path: str | Path, images_path: str | Path,
                 class_names: list[str] | None = None):
        self._results = _open(Path(results_path), "w")
        self._results.write("[")
        self._wrote_result = False
        self._images_path = Path(images_path)
        self._images = []
        self._categories = dict(enumerate(class_names or []))

    def write(self, record: FrameRecord) -> None:
        image_id = record.seq
        self._images.append({
            "id": image_id, "file_name": f"{record.stream}/{record.frame_index:06d}",
            "width": record.width, "height": record.height, "stream": record.stream,
            "seq": record.seq, "frame_index": record.frame_index, "pts": record.pts})
        for inst in record.instances:
            wire = inst.to_wire()
            self._categories[wire["class_id"]] = wire["label"]
            x1, y1, x2, y2 = wire["box"]
            result = {"image_id": image_id, "category_id": wire["class_id"],
                      "segmentation": wire["mask"], "bbox": [x1, y1, x2 - x1, y2 - y1],
                      "score": wire["score"]}
            if "track_id" in wire:
                result["track_id"] = wire["track_id"]
            self._results.write(("," if self._wrote_result else "") + "\n" + json.dumps(result))
            self._wrote_result = True

    def close(self) -> None:
        self._results.write("\n]\n")
        self._results.close()
        categories = [{"id": class_id, "name": name}
                      for class_id, name in sorted(self._categories.items())]
        with _open(self._images_path, "w") as file:
            json.dump({"images": self._images, "categories": categories, "annotations": []}, file)


class TrackFilesSink:
    """The tracked instances as ``<stem>.mots.txt`` and ``<stem>.mot.txt`` (formats in the module
    docstring; models/data/mots.py writes them), a frame's lines at a time, flushed per frame."""

    def __init__(self, stem: str | Path):
        self._mots = _open(Path(f"{stem}.mots.txt"), "w")
        self._mot = _open(Path(f"{stem}.mot.txt"), "w")

    def write(self, record: FrameRecord) -> None:
        tracked = [inst for inst in record.instances if inst.track_id]
        frame = TrackedFrame(np.array([inst.track_id for inst in tracked], np.int64),
                             np.array([inst.class_id for inst in tracked], np.int64),
                             np.array([inst.box for inst in tracked], np.float64).reshape(-1, 4),
                             np.array([inst.score for inst in tracked], np.float64), [inst.rle for inst in tracked])
        number = int(record.seq) + 1
        self._mots.write("".join(line + "\n" for line in mots_lines(number, without_overlaps(frame))))
        self._mot.write("".join(line + "\n" for line in mot_lines(number, frame)))
        self._mots.flush()
        self._mot.flush()

    def close(self) -> None:
        self._mots.close()
        self._mot.close()


class OverlayVideoSink:
    """Renders frames with their instances into a video (``.mp4`` or ``.avi``).

    Opened on the first frame, at that frame's size. The frame's pixels may come smaller (a
    downscaled image from the wire) and are scaled up; without them the instances are drawn on a
    black canvas of the frame's size.
    """

    def __init__(self, path: str | Path, fps: float, zones=None):
        """``zones``: the stream's ``pipeline.zones.ZoneStage``, drawn with each frame's counts where
        the stage places them in a frame of its size."""
        self._path = Path(path)
        self._zones = zones
        if self._path.suffix.lower() not in FOURCC_BY_SUFFIX:
            raise SinkError(f"overlay video {self._path}: use a .mp4 or .avi file name")
        self._fps = fps
        self._writer = None
        self._size = None

    def write(self, record: FrameRecord, image_rgb: np.ndarray | None = None) -> None:
        size = (record.width, record.height)
        if self._writer is None:
            self._open(size)
        if size != self._size:
            raise SinkError(f"overlay video {self._path}: frame seq {record.seq} is "
                            f"{size[0]}x{size[1]}, the video is {self._size[0]}x{self._size[1]}")
        if image_rgb is not None and (image_rgb.shape[2:] != (3,) or image_rgb.shape[0] > size[1]
                                      or image_rgb.shape[1] > size[0]):
            raise SinkError(f"overlay video {self._path}: frame seq {record.seq} pixels are "
                            f"{image_rgb.shape}, its record says {size[0]}x{size[1]} RGB")
        canvas = render_frame(*size, record.instances, image_rgb)
        if self._zones is not None:
            draw_zones(canvas, self._zones.geometry(*size), zone_figures(record))   # scaled to this frame
        self._writer.write(canvas)

    def _open(self, size: tuple[int, int]) -> None:
        fourcc = cv2.VideoWriter_fourcc(*FOURCC_BY_SUFFIX[self._path.suffix.lower()])
        self._writer = cv2.VideoWriter(str(self._path), fourcc, self._fps, size)
        if not self._writer.isOpened():
            raise SinkError(f"overlay video {self._path}: OpenCV cannot open it for writing")
        self._size = size

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


class StreamSinks:
    """All file sinks of one stream under ``out_dir`` (names in the module docstring)."""

    def __init__(self, out_dir: str | Path, stream: str, class_names: list[str] | None = None,
                 overlay_fps: float | None = None, resume_at: int | None = None, tracks: bool = False,
                 zones=None):
        """``resume_at``: reopen after a crash, at this seq (see the module docstring); ``tracks``:
        the records carry track ids (tracking is on): also the MOTS and MOT files; ``zones``: the
        stream's ``pipeline.zones.ZoneStage``, drawn on the overlay video."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._out = out
        eos_path(out, stream).unlink(missing_ok=True)  # the stream is being written again: not done
        kept = []
        if resume_at is None:
            self._jsonl = JsonlSink(out / f"{stream}.jsonl")
        else:
            self._jsonl, kept = JsonlSink.resumed(out / f"{stream}.jsonl", resume_at)
        self._coco = CocoResultsSink(out / f"{stream}.coco_results.json",
                                     out / f"{stream}.coco_images.json", class_names)
        self._tracks = TrackFilesSink(out / stream) if tracks else None
        for line in kept:
            record = FrameRecord.from_wire(json.loads(line))
            self._coco.write(record)
            if self._tracks is not None:
                self._tracks.write(record)
        video = f"{stream}.overlay.mp4" if not resume_at else f"{stream}.overlay.from{resume_at}.mp4"
        self._video = OverlayVideoSink(out / video, overlay_fps, zones) if overlay_fps else None

    @property
    def wants_pixels(self) -> bool:
        """Whether ``write`` should be given the frame's pixels (the overlay video is on)."""
        return self._video is not None

    def write(self, record: FrameRecord, image_rgb: np.ndarray | None = None) -> None:
        self._jsonl.write(record)
        self._coco.write(record)
        if self._tracks is not None:
            self._tracks.write(record)
        if self._video is not None:
            self._video.write(record, image_rgb)

    def close(self, eos: EndOfStream | None = None) -> None:
        """Close every file; then, given the stream's `eos`, write it as ``<stream>.eos.json``."""
        self._jsonl.close()
        self._coco.close()
        if self._tracks is not None:
            self._tracks.close()
        if self._video is not None:
            self._video.close()
        if eos is not None:
            write_eos(self._out, eos)


def eos_path(out_dir: str | Path, stream: str) -> Path:
    return Path(out_dir) / f"{stream}.eos.json"


def write_eos(out_dir: str | Path, eos: EndOfStream) -> None:
    """``<stream>.eos.json``: the EOS header (written whole, then renamed into place: a crash
    leaves the old file or the new one, never half of one)."""
    path = eos_path(out_dir, eos.stream)
    part = path.with_suffix(".json.part")
    with _open(part, "wb") as file:
        file.write(encode_header(eos) + b"\n")
    part.replace(path)


def done_streams(out_dir: str | Path, streams: list[str]) -> list[str]:
    """Those of `streams` that an earlier run into `out_dir` published to their end: their
    ``<stream>.eos.json`` says reason ``end`` (a stream stopped, or ended by an error, is not done;
    an unreadable file is not done either)."""
    done = []
    for stream in streams:
        try:
            header = json.loads(eos_path(out_dir, stream).read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(header, dict) and header.get("stream") == stream and header.get("reason") == "end":
            done.append(stream)
    return done

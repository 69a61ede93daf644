"""Wire protocol v1: the frame record every stage shares, and the messages consumers read.

A frame travels as one `FrameRecord`: the ingest makes it (stream, frame_index, pts, ...), the
scheduler numbers it (`seq`) and fills in the `InstanceRecord`s a worker found in it (defined in
workers.results, since workers make them and never import the pipeline), the publisher stamps
`published_at` and sends it, the sinks write it, and the consumer SDK reads it back from the
wire. `EndOfStream` ends a stream. `to_wire()` gives a record's JSON header, `from_wire()` reads
one.

One ZeroMQ multipart message per frame on a PUB socket (docs/protocol.md has the field table):

1. topic ``maskstream/<stream_id>/``: the trailing slash keeps a ``cam1`` subscription from
   matching ``cam10``, since ZeroMQ subscriptions are byte prefixes;
2. header: compact UTF-8 JSON with ``"schema": "maskstream.frame/1"`` and the fields of
   ``FRAME_FIELDS``, in that order (with tracking, each instance's ``track_id`` and the frame's
   ``tracks_ended`` too, with zones each instance's ``zones`` (and with tracking its
   ``dwell_s``) and the frame's ``zone_counts``, ``crossings`` and ``line_counts``:
   ``OPTIONAL_FIELDS``, absent without them; then ``image`` when a third part follows);
3. only when the publisher sends images (``publish.images: jpeg``): the frame's pixels as a JPEG
   (``pipeline.images``), which the header's ``image`` field describes;

and at the end of a stream, instead of a frame: ``{"schema": "maskstream.eos/1", "stream", "frames",
"reason"}`` (``reason``: ``end``, ``stopped`` or ``error``, with ``error``: one line; with tracking,
``tracks_ended``: the tracks still in view at the end).

The JSON Schemas of both headers ship with the package (``json_schema(FRAME_SCHEMA)``, files in
pipeline/schema/). Fields may be added within version 1: consumers ignore what they do not know.

``decode_message`` is the receiving side's gate: whatever arrives (a wrong number of parts, bytes
that are not UTF-8 JSON, an unknown schema, a field of the wrong type, an absurd frame size, a mask
whose RLE does not decode or does not cover the frame) either becomes a record that is safe to use
or raises one-line ``ProtocolError``; nothing it checks allocates more than the message's own size.
A message may carry a third part after the header (an image of the frame); it is checked for
size and otherwise left to whoever reads it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
from pycocotools import mask as mask_utils

from models.errors import ProtocolError
from workers.results import InstanceRecord

from .images import EncodedImage

if TYPE_CHECKING:  # the consumer SDK reads records without Ray
    from workers.frames import FrameRef

FRAME_SCHEMA = "maskstream.frame/1"
EOS_SCHEMA = "maskstream.eos/1"
TOPIC_ROOT = "maskstream/"
EOS_REASONS = ("end", "stopped", "error")  # the source ended; the run was stopped; it failed (see `error`)
CROSSING_DIRECTIONS = ("in", "out")        # to the right-hand side of a counting line; to its left
# Bounds a receiver holds every message to: what no real frame exceeds, so that a hostile or broken
# message cannot make a consumer allocate masks or canvases of absurd size.
MAX_FRAME_PIXELS = 1 << 27        # a frame of at most 134 M pixels (16384 x 8192)
MAX_INSTANCES = 10_000            # per frame
MAX_IMAGE_OVERHEAD = 1 << 16      # an image part is at most 3 bytes a pixel plus this


@dataclass(frozen=True)
class FrameRecord:
    """One frame of one stream, from the ingest to the consumer (see the module docstring).

    The fields before ``pixels`` are the wire header's, in its order. Before the publisher,
    ``seq`` is None until the scheduler accepts the frame and ``published_at`` is None.
    ``encoded_image`` is the message's optional third part (the header's ``image`` field says
    its size); ``image`` decodes it.
    """
    stream: str
    seq: int | None               # per stream from 0, gap-free over published frames
    frame_index: int              # position in the source (live: frames dropped before are skipped)
    pts: float                    # seconds, on the source's clock
    captured_at: float            # Unix seconds when the frame was read
    published_at: float | None    # Unix seconds when it was sent
    width: int
    height: int
    dropped_before: int           # frames of this stream dropped since the last one published
    timing_ms: dict[str, float]   # milliseconds per stage: decode, queue, fetch, inference, publish
    instances: tuple[InstanceRecord, ...] = ()
    tracks_ended: tuple[int, ...] | None = None  # with tracking: ids of the tracks that ended at this frame
    # With zones (pipeline/zones.py): per region, its instances by label; the crossings of counting
    # lines at this frame ({"line", "track_id", "label", "direction"}); per line, the crossings so far.
    zone_counts: dict[str, dict[str, int]] | None = None
    crossings: tuple[dict, ...] | None = None
    line_counts: dict[str, dict[str, dict[str, int]]] | None = None
    pixels: FrameRef | None = field(default=None, compare=False, repr=False)  # never on the wire
    encoded_image: EncodedImage | None = field(default=None, compare=False, repr=False)  # the JPEG part

    @cached_property
    def masks(self) -> np.ndarray:
        """(N, height, width) bool masks of the instances, decoded once."""
        if not self.instances:
            return np.zeros((0, self.height, self.width), bool)
        decoded = mask_utils.decode([inst.rle for inst in self.instances])  # (H, W, N)
        return np.moveaxis(decoded, -1, 0).astype(bool)

    @cached_property
    def image(self) -> np.ndarray | None:
        """The frame's pixels, (h, w, 3) uint8 RGB, decoded once from the message's JPEG part: the
        frame's size, or smaller when the publisher downscales (``publish.image_max_side``; the
        masks keep the frame's size). None when the message carries no image."""
        if self.encoded_image is None:
            return None
        return self.encoded_image.decode(f"frame of stream {self.stream!r} seq {self.seq}")

    def check(self) -> None:
        """Raises a one-line ProtocolError if the record cannot be published: a bad stream id, no
        seq, or a mask of another size than the frame."""
        check_stream_id(self.stream)
        if not isinstance(self.seq, (int, np.integer)) or self.seq < 0:
            raise ProtocolError(f"record of stream {self.stream!r} frame {self.frame_index}: "
                                f"seq {self.seq!r} is not a number from 0")
        for inst in self.instances:
            if list(inst.rle["size"]) != [self.height, self.width]:
                raise ProtocolError(f"record of stream {self.stream!r} seq {self.seq}: a mask of size "
                                    f"{list(inst.rle['size'])} in a {self.height}x{self.width} frame")

    def to_wire(self) -> dict:
        """The v1 header: plain JSON types (numpy scalars become numbers), fields in order."""
        header = {"schema": FRAME_SCHEMA, "stream": self.stream, "seq": int(self.seq),
                  "frame_index": int(self.frame_index), "pts": float(self.pts),
                  "captured_at": float(self.captured_at), "published_at": float(self.published_at),
                  "width": int(self.width), "height": int(self.height),
                  "dropped_before": int(self.dropped_before),
                  "timing_ms": {stage: float(ms) for stage, ms in self.timing_ms.items()},
                  "instances": [inst.to_wire() for inst in self.instances]}
        if self.tracks_ended is not None:
            header["tracks_ended"] = [int(i) for i in self.tracks_ended]
        if self.zone_counts is not None:
            header["zone_counts"] = self.zone_counts
        if self.crossings is not None:
            header["crossings"] = list(self.crossings)
            header["line_counts"] = self.line_counts
        if self.encoded_image is not None:
            header["image"] = self.encoded_image.to_wire()
        return header

    @classmethod
    def from_wire(cls, header: dict, image: bytes | None = None) -> FrameRecord:
        """The record of a v1 header (and ``image``, the message's third part, which the header's
        ``image`` field describes); a one-line ProtocolError naming what is missing or malformed
        (see ``check_frame_header``)."""
        check_frame_header(header)
        where = f"frame header of stream {header['stream']!r} seq {header['seq']}"
        instances = tuple(InstanceRecord.from_wire(inst) for inst in header["instances"])
        if ("image" in header) != (image is not None):
            raise ProtocolError(f"{where}: an image field without an image part" if image is None
                                else f"{where}: an image part the header does not describe")
        encoded_image = None
        if image is not None:
            encoded_image = EncodedImage.from_wire(header["image"], image, where)
            if not (1 <= encoded_image.width <= header["width"] and 1 <= encoded_image.height <= header["height"]):
                raise ProtocolError(f"{where}: an image of {encoded_image.width}x{encoded_image.height} "
                                    f"for a frame of {header['width']}x{header['height']}")
        crossings = header.get("crossings")
        return cls(**{name: header[name] for name in FRAME_FIELDS if name != "instances"}, instances=instances,
                   tracks_ended=_track_ids(header, where), zone_counts=header.get("zone_counts"),
                   crossings=None if crossings is None else tuple(crossings), line_counts=header.get("line_counts"),
                   encoded_image=encoded_image)


# After the others, only with tracking or zones: headers without them are v1 too.
OPTIONAL_FIELDS = ("tracks_ended", "zone_counts", "crossings", "line_counts")
FRAME_FIELDS = tuple(f.name for f in dataclasses.fields(FrameRecord)
                     if f.name not in ("pixels", "encoded_image", *OPTIONAL_FIELDS))


@dataclass(frozen=True)
class EndOfStream:
    """A stream's end: it published ``frames`` frames, seq 0..frames-1, and ended for ``reason``
    (one of EOS_REASONS; ``error`` is the one-line problem when the reason is ``error``); with
    tracking, ``tracks_ended`` are the ids of the tracks still alive then (they end with the stream)."""
    stream: str
    frames: int
    reason: str = "end"
    error: str | None = None
    tracks_ended: tuple[int, ...] | None = None

    def to_wire(self) -> dict:
        header = {"schema": EOS_SCHEMA, "stream": self.stream, "frames": int(self.frames), "reason": self.reason}
        if self.error is not None:
            header["error"] = self.error
        if self.tracks_ended is not None:
            header["tracks_ended"] = [int(i) for i in self.tracks_ended]
        return header

    @classmethod
    def from_wire(cls, header: dict) -> EndOfStream:
        """The end of a v1 header; ``reason`` is ``end`` in the headers of publishers before it existed."""
        where = f"end of stream {header.get('stream')!r}"
        _require(_is_count(header.get("frames")), where, "frames is not an integer >= 0")
        reason, error = header.get("reason", "end"), header.get("error")
        _require(reason in EOS_REASONS, where, f"reason {str(reason)[:40]!r} is not one of {', '.join(EOS_REASONS)}")
        _require(error is None or isinstance(error, str), where, "error is not a string")
        ended = _track_ids(header, where)
        return cls(header["stream"], header["frames"], reason, error, ended)

    def describe(self) -> str:
        """``cam1 ended after 12 frames (end)``, with the error line when there is one."""
        why = f"error: {self.error}" if self.reason == "error" and self.error else self.reason
        return f"{self.stream} ended after {self.frames} frames ({why})"


MESSAGE_TYPES = {FRAME_SCHEMA: FrameRecord, EOS_SCHEMA: EndOfStream}


def check_stream_id(stream_id: str) -> None:
    """Stream ids name topics and files: non-empty, no '/'."""
    if not isinstance(stream_id, str) or not stream_id or "/" in stream_id:
        raise ProtocolError(f"stream id {stream_id!r}: must be a non-empty string without '/'")


def topic(stream_id: str) -> bytes:
    """The topic frame of ``stream_id``'s messages, also its subscription prefix."""
    check_stream_id(stream_id)
    return f"{TOPIC_ROOT}{stream_id}/".encode()


def encode_header(message: FrameRecord | EndOfStream) -> bytes:
    """The header as compact UTF-8 JSON; also the line format of the JSON-lines sinks."""
    return json.dumps(message.to_wire(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def encode_message(message: FrameRecord | EndOfStream) -> list[bytes]:
    """The multipart message [topic, header] of a frame or an end of stream; [topic, header, JPEG]
    for a frame that carries its image."""
    image = getattr(message, "encoded_image", None)
    return [topic(message.stream), encode_header(message)] + ([] if image is None else [image.data])


def decode_header(parts: list[bytes]) -> dict:
    """The JSON header of a received [topic, header(, image)] message, checked against its topic
    and schema; a one-line ProtocolError for anything else."""
    if len(parts) not in (2, 3):
        raise ProtocolError(f"message of {len(parts)} parts: v1 messages have 2 (topic, header) or 3 (+ image)")
    where = f"message on {bytes(parts[0][:60])!r}"
    try:
        header = json.loads(bytes(parts[1]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:  # ValueError: JSON, huge integers
        raise ProtocolError(f"{where}: header is not UTF-8 JSON ({str(error)[:80]})") from None
    if not isinstance(header, dict) or not isinstance(header.get("schema"), str) or header["schema"] not in MESSAGE_TYPES:
        schema = header.get("schema") if isinstance(header, dict) else None
        raise ProtocolError(f"{where}: unknown schema {str(schema)[:40]!r}")
    stream = header.get("stream")
    if not isinstance(stream, str) or not stream or "/" in stream or topic(stream) != parts[0]:
        raise ProtocolError(f"{where}: header names stream {str(stream)[:60]!r}")
    if len(parts) == 3:
        if header["schema"] != FRAME_SCHEMA:
            raise ProtocolError(f"{where}: an end of stream has no third part")
        size = _pixels(header)
        if size is None or len(parts[2]) > 3 * size + MAX_IMAGE_OVERHEAD:
            raise ProtocolError(f"{where}: an image part of {len(parts[2])} bytes for a frame of {size} pixels")
    return header


def decode_message(parts: list[bytes]) -> FrameRecord | EndOfStream:
    """The frame record or end of stream of a received [topic, header(, image)] message (see
    ``decode_header``)."""
    header = decode_header(parts)
    if header["schema"] == FRAME_SCHEMA:
        return FrameRecord.from_wire(header, parts[2] if len(parts) == 3 else None)
    return EndOfStream.from_wire(header)


# -- checking a received header (the consumer's side; the JSON Schemas say the same for other languages) --

def _require(condition: bool, where: str, problem: str) -> None:
    if not condition:
        raise ProtocolError(f"{where}: {problem}")


def _is_count(value) -> bool:
    """An integer >= 0 (JSON booleans are not numbers)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value) -> bool:
    """A finite JSON number."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pixels(header: dict) -> int | None:
    """width x height of a frame header, if both are sane (at least 1, at most MAX_FRAME_PIXELS)."""
    width, height = header.get("width"), header.get("height")
    if not (_is_count(width) and _is_count(height) and width >= 1 and height >= 1):
        return None
    return width * height if width * height <= MAX_FRAME_PIXELS else None


def check_frame_header(header: dict) -> None:
    """Raises a one-line ProtocolError unless ``header`` is a well-formed v1 frame header: every
    field of FRAME_FIELDS of its type, a sane frame size, and masks whose RLE decodes to exactly
    the frame's size. Costs time in proportion to the header's length, never to the frame's size."""
    where = f"frame header of stream {str(header.get('stream'))[:60]!r} seq {str(header.get('seq'))[:20]}"
    missing = [name for name in FRAME_FIELDS if name not in header]
    _require(not missing, where, f"missing {', '.join(missing)}")
    for name in ("seq", "frame_index", "dropped_before"):
        _require(_is_count(header[name]), where, f"{name} is not an integer >= 0")
    for name in ("pts", "captured_at", "published_at"):
        _require(_is_number(header[name]), where, f"{name} is not a number")
    pixels = _pixels(header)
    _require(pixels is not None, where, f"frame size {str(header['width'])[:20]}x{str(header['height'])[:20]} "
                                        f"is not 1 to {MAX_FRAME_PIXELS} pixels")
    timing = header["timing_ms"]
    _require(isinstance(timing, dict) and all(_is_number(ms) for ms in timing.values()), where,
             "timing_ms is not an object of numbers")
    instances = header["instances"]
    _require(isinstance(instances, list) and len(instances) <= MAX_INSTANCES, where,
             f"instances is not a list of at most {MAX_INSTANCES}")
    for index, instance in enumerate(instances):
        _check_instance(instance, [header["height"], header["width"]], f"{where} instance {index}")
    _check_zones(header, where)


def _check_instance(instance, size: list[int], where: str) -> None:
    _require(isinstance(instance, dict), where, "not an object")
    missing = [name for name in ("class_id", "label", "score", "box", "mask") if name not in instance]
    _require(not missing, where, f"missing {', '.join(missing)}")
    _require(_is_count(instance["class_id"]) and isinstance(instance["label"], str), where,
             "class_id or label of the wrong type")
    _require(_is_number(instance["score"]) and 0 <= instance["score"] <= 1, where, "score is not in [0, 1]")
    box = instance["box"]
    _require(isinstance(box, list) and len(box) == 4 and all(map(_is_number, box)), where, "box is not 4 numbers")
    mask = instance["mask"]
    _require(isinstance(mask, dict) and mask.get("size") == size and isinstance(mask.get("counts"), str), where,
             f"mask is not an RLE of the frame's size {size}")
    _require(rle_pixels(mask["counts"]) == size[0] * size[1], where, "mask RLE does not cover the frame")
    _require(_is_count(instance.get("track_id", 0)), where, "track_id is not an integer >= 0")
    zones = instance.get("zones", [])
    _require(isinstance(zones, list) and all(isinstance(z, str) for z in zones), where, "zones is not a list of names")
    dwell = instance.get("dwell_s", {})
    _require(isinstance(dwell, dict) and all(_is_number(t) and t >= 0 for t in dwell.values()), where,
             "dwell_s is not an object of seconds >= 0")


def _is_label_counts(value) -> bool:
    """An object of integers >= 0 ({label: count})."""
    return isinstance(value, dict) and all(_is_count(n) for n in value.values())


def _check_zones(header: dict, where: str) -> None:
    """A header's zone fields, when present (pipeline/zones.py): each of its type."""
    counts = header.get("zone_counts", {})
    _require(isinstance(counts, dict) and all(map(_is_label_counts, counts.values())), where,
             "zone_counts is not an object of {label: count} objects")
    crossings, totals = header.get("crossings", []), header.get("line_counts", {})
    _require(("crossings" in header) == ("line_counts" in header), where, "crossings and line_counts come together")
    _require(isinstance(crossings, list) and all(
        isinstance(c, dict) and isinstance(c.get("line"), str) and _is_count(c.get("track_id")) and c["track_id"] >= 1
        and isinstance(c.get("label"), str) and c.get("direction") in CROSSING_DIRECTIONS for c in crossings), where,
        "crossings is not a list of {line, track_id, label, direction} objects")
    _require(isinstance(totals, dict) and all(
        isinstance(t, dict) and set(t) == set(CROSSING_DIRECTIONS) and all(map(_is_label_counts, t.values()))
        for t in totals.values()), where, "line_counts is not an object of {in, out} label counts")


def _track_ids(header: dict, where: str) -> tuple[int, ...] | None:
    """A header's ``tracks_ended`` (absent without tracking: None), checked: distinct ids >= 1."""
    ended = header.get("tracks_ended")
    if ended is None:
        return None
    _require(isinstance(ended, list) and len(ended) <= MAX_INSTANCES
             and all(_is_count(i) and i >= 1 for i in ended) and len(set(ended)) == len(ended), where,
             "tracks_ended is not a list of distinct integers >= 1")
    return tuple(ended)


def rle_pixels(counts: str) -> int:
    """The pixels a COCO compressed RLE ``counts`` string covers (the sum of its runs), decoded the
    way pycocotools decodes it (5-bit groups from '0', a continuation bit, a sign bit in the last
    group, runs from the third on stored as the difference to the run two before), but without
    making the mask. ProtocolError if it does not decode: characters out of range, a number cut
    off, a run that is negative or beyond 32 bits."""
    try:
        codes = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        raise ProtocolError("mask RLE has characters outside ASCII") from None
    if codes.size == 0:
        return 0
    if ((codes < 0) | (codes > 63)).any() or codes[-1] & 0x20:
        raise ProtocolError("mask RLE does not decode (characters out of range, or a number cut off)")
    ends = np.flatnonzero((codes & 0x20) == 0)          # the last group of each number
    starts = np.concatenate(([0], ends[:-1] + 1))
    groups = ends - starts + 1
    if groups.max() > 7:                                # 35 bits: more than any 32-bit run needs
        raise ProtocolError("mask RLE does not decode (a run beyond 32 bits)")
    number = np.repeat(np.arange(ends.size), groups)
    shift = 5 * (np.arange(codes.size) - starts[number])
    values = np.zeros(ends.size, np.int64)
    np.add.at(values, number, (codes & 0x1F) << shift)
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * groups[negative])
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])                # run m (m > 2) = value m + run m - 2
    runs[2::2] = np.cumsum(values[2::2])
    if (runs < 0).any() or (runs >= 1 << 32).any():
        raise ProtocolError("mask RLE does not decode (a negative or oversized run)")
    return int(runs.sum())


def json_schema(schema: str) -> dict:
    """The JSON Schema (draft 2020-12) of ``FRAME_SCHEMA`` or ``EOS_SCHEMA`` headers, as shipped
    with the package (pipeline/schema/maskstream.frame-1.json, maskstream.eos-1.json)."""
    name = schema.replace("/", "-") + ".json"
    return json.loads(resources.files(__package__).joinpath("schema", name).read_text(encoding="utf-8"))

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
   ``tracks_ended`` too: ``OPTIONAL_FIELDS``, absent without tracking; then ``image`` when a
   third part follows);
3. only when the publisher sends images (``publish.images: jpeg``): the frame's pixels as a JPEG
   (``pipeline.images``), which the header's ``image`` field describes;

and at the end of a stream, instead of a frame: ``{"schema": "maskstream.eos/1", "stream", "frames"}``
(with tracking, ``tracks_ended``: the tracks still in view at the end).

The JSON Schemas of both headers ship with the package (``json_schema(FRAME_SCHEMA)``, files in
pipeline/schema/). Fields may be added within version 1: consumers ignore what they do not know.
"""
from __future__ import annotations

import dataclasses
import json
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
        if self.encoded_image is not None:
            header["image"] = self.encoded_image.to_wire()
        return header

    @classmethod
    def from_wire(cls, header: dict, image: bytes | None = None) -> FrameRecord:
        """The record of a v1 header (and ``image``, the message's third part, which the header's
        ``image`` field describes); a one-line ProtocolError naming what is missing or malformed."""
        missing = [name for name in FRAME_FIELDS if name not in header]
        where = f"frame header of stream {header.get('stream')!r} seq {header.get('seq')!r}"
        if missing:
            raise ProtocolError(f"{where}: missing {', '.join(missing)}")
        try:
            instances = tuple(InstanceRecord.from_wire(inst) for inst in header["instances"])
        except (KeyError, TypeError) as error:
            raise ProtocolError(f"{where}: malformed instance ({type(error).__name__}: {error})") from None
        if ("image" in header) != (image is not None):
            raise ProtocolError(f"{where}: an image field without an image part" if image is None
                                else f"{where}: an image part the header does not describe")
        encoded_image = None if image is None else EncodedImage.from_wire(header["image"], image, where)
        ended = header.get("tracks_ended")
        return cls(**{name: header[name] for name in FRAME_FIELDS if name != "instances"}, instances=instances,
                   tracks_ended=None if ended is None else tuple(ended), encoded_image=encoded_image)


OPTIONAL_FIELDS = ("tracks_ended",)   # after the others, only with tracking: headers without are v1 too
FRAME_FIELDS = tuple(f.name for f in dataclasses.fields(FrameRecord)
                     if f.name not in ("pixels", "encoded_image", *OPTIONAL_FIELDS))


@dataclass(frozen=True)
class EndOfStream:
    """A stream's end: it published ``frames`` frames, seq 0..frames-1; with tracking,
    ``tracks_ended`` are the ids of the tracks still alive then (they end with the stream)."""
    stream: str
    frames: int
    tracks_ended: tuple[int, ...] | None = None

    def to_wire(self) -> dict:
        header = {"schema": EOS_SCHEMA, "stream": self.stream, "frames": int(self.frames)}
        if self.tracks_ended is not None:
            header["tracks_ended"] = [int(i) for i in self.tracks_ended]
        return header

    @classmethod
    def from_wire(cls, header: dict) -> EndOfStream:
        if "frames" not in header:
            raise ProtocolError(f"end of stream {header.get('stream')!r}: missing frames")
        ended = header.get("tracks_ended")
        return cls(header["stream"], header["frames"], None if ended is None else tuple(ended))


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
    """The JSON header of a received [topic, header] or [topic, header, image] message, checked
    against its topic and schema."""
    if len(parts) not in (2, 3):
        raise ProtocolError(f"message of {len(parts)} parts: v1 messages have 2 (topic, header) "
                            f"or 3 (topic, header, image)")
    try:
        header = json.loads(parts[1])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"message on {parts[0]!r}: header is not UTF-8 JSON ({error})") from None
    if not isinstance(header, dict) or header.get("schema") not in MESSAGE_TYPES:
        schema = header.get("schema") if isinstance(header, dict) else None
        raise ProtocolError(f"message on {parts[0]!r}: unknown schema {schema!r}")
    if topic(header.get("stream")) != parts[0]:
        raise ProtocolError(f"message on {parts[0]!r}: header names stream {header.get('stream')!r}")
    return header


def decode_message(parts: list[bytes]) -> FrameRecord | EndOfStream:
    """The frame record or end of stream of a received message (see ``decode_header``)."""
    header = decode_header(parts)
    if header["schema"] == FRAME_SCHEMA:
        return FrameRecord.from_wire(header, parts[2] if len(parts) == 3 else None)
    if len(parts) == 3:
        raise ProtocolError(f"message on {parts[0]!r}: an end of stream has no third part")
    return EndOfStream.from_wire(header)


def json_schema(schema: str) -> dict:
    """The JSON Schema (draft 2020-12) of ``FRAME_SCHEMA`` or ``EOS_SCHEMA`` headers, as shipped
    with the package (pipeline/schema/maskstream.frame-1.json, maskstream.eos-1.json)."""
    name = schema.replace("/", "-") + ".json"
    return json.loads(resources.files(__package__).joinpath("schema", name).read_text(encoding="utf-8"))

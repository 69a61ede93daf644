"""Wire protocol v1: the messages the publisher sends and consumers read.

One ZeroMQ multipart message per frame on a PUB socket (see ../shared/DESIGN.md):

1. topic ``maskstream/<stream_id>/``: the trailing slash keeps a ``cam1`` subscription from
   matching ``cam10``, since ZeroMQ subscriptions are byte prefixes;
2. header: compact UTF-8 JSON with ``"schema": "maskstream.frame/1"`` and the fields of
   ``FRAME_FIELDS``, in that order;
3. at the end of a stream, instead of a frame: ``{"schema": "maskstream.eos/1", "stream", "frames"}``.

Instances carry ``class_id``, ``label``, ``score``, ``box`` ([x1, y1, x2, y2] in pixels) and
``mask`` ({"size": [height, width], "counts": COCO compressed RLE string}).
"""
import json

from models.errors import ProtocolError

FRAME_SCHEMA = "maskstream.frame/1"
EOS_SCHEMA = "maskstream.eos/1"
TOPIC_ROOT = "maskstream/"

FRAME_FIELDS = ("stream", "seq", "frame_index", "pts", "captured_at", "published_at", "width",
                "height", "dropped_before", "timing_ms", "instances")
INSTANCE_FIELDS = ("class_id", "label", "score", "box", "mask")


def check_stream_id(stream_id: str) -> None:
    """Stream ids name topics and files: non-empty, no '/'."""
    if not isinstance(stream_id, str) or not stream_id or "/" in stream_id:
        raise ProtocolError(f"stream id {stream_id!r}: must be a non-empty string without '/'")


def topic(stream_id: str) -> bytes:
    """The topic frame of ``stream_id``'s messages, also its subscription prefix."""
    check_stream_id(stream_id)
    return f"{TOPIC_ROOT}{stream_id}/".encode()


def check_record(record: dict) -> None:
    """Raises a one-line ProtocolError if a pipeline record lacks a field the header needs."""
    missing = [name for name in FRAME_FIELDS if name != "published_at" and name not in record]
    if missing:
        raise ProtocolError(f"record of stream {record.get('stream')!r} seq {record.get('seq')!r}: "
                            f"missing {', '.join(missing)}")


def frame_header(record: dict, published_at: float) -> dict:
    """The v1 header of a pipeline record, stamped with ``published_at`` (Unix seconds).

    Keeps exactly the protocol's fields (a record's extra keys, such as ``frame_ref``, stay out)
    and turns numpy scalars into plain JSON numbers.
    """
    check_record(record)
    return {
        "schema": FRAME_SCHEMA,
        "stream": record["stream"],
        "seq": int(record["seq"]),
        "frame_index": int(record["frame_index"]),
        "pts": float(record["pts"]),
        "captured_at": float(record["captured_at"]),
        "published_at": float(published_at),
        "width": int(record["width"]),
        "height": int(record["height"]),
        "dropped_before": int(record["dropped_before"]),
        "timing_ms": {stage: float(ms) for stage, ms in record["timing_ms"].items()},
        "instances": [_instance(inst) for inst in record["instances"]],
    }


def _instance(inst: dict) -> dict:
    """One instance with plain JSON types, in the protocol's field order."""
    counts = inst["mask"]["counts"]
    return {
        "class_id": int(inst["class_id"]),
        "label": str(inst["label"]),
        "score": float(inst["score"]),
        "box": [float(v) for v in inst["box"]],
        "mask": {"size": [int(v) for v in inst["mask"]["size"]],
                 "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts},
    }


def eos_header(stream_id: str, frames: int) -> dict:
    """The end-of-stream message: ``stream_id`` published ``frames`` frames (seq 0..frames-1)."""
    return {"schema": EOS_SCHEMA, "stream": stream_id, "frames": int(frames)}


def encode_header(header: dict) -> bytes:
    """Compact UTF-8 JSON; also the line format of the JSON-lines sinks."""
    return json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def encode_message(header: dict) -> list[bytes]:
    """The multipart message [topic, header] for a frame or EOS header."""
    return [topic(header["stream"]), encode_header(header)]


def decode_message(parts: list[bytes]) -> dict:
    """The header of a received [topic, header] message, checked against its topic and schema."""
    if len(parts) != 2:
        raise ProtocolError(f"message of {len(parts)} parts: v1 messages have 2 (topic, header)")
    try:
        header = json.loads(parts[1])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"message on {parts[0]!r}: header is not UTF-8 JSON ({error})") from None
    if not isinstance(header, dict) or header.get("schema") not in (FRAME_SCHEMA, EOS_SCHEMA):
        schema = header.get("schema") if isinstance(header, dict) else None
        raise ProtocolError(f"message on {parts[0]!r}: unknown schema {schema!r}")
    if topic(header.get("stream")) != parts[0]:
        raise ProtocolError(f"message on {parts[0]!r}: header names stream {header.get('stream')!r}")
    return header


def is_eos(header: dict) -> bool:
    """Whether a decoded header ends its stream."""
    return header["schema"] == EOS_SCHEMA

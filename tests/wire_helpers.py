"""Helpers for the publisher-side tests: records with real RLE masks, publishers, a consumer that
checks every message against the published JSON Schema, warm-up."""
import json

import jsonschema
import numpy as np
import ray
from pycocotools import mask as mask_utils

from pipeline import consumer
from pipeline.config import OutputSection, PublishSection
from pipeline.protocol import EOS_SCHEMA, FRAME_SCHEMA, FrameRecord, InstanceRecord, ProtocolError, json_schema
from pipeline.publisher import PublisherActor

WIDTH, HEIGHT = 64, 48
LABELS = {1: "person", 3: "car"}
ANY_PORT = "tcp://127.0.0.1:*"
WARM_UP_LIMIT = 500  # frames; a guard against a subscriber that never connects, not a timing
VALIDATORS = {schema: jsonschema.Draft202012Validator(json_schema(schema)) for schema in (FRAME_SCHEMA, EOS_SCHEMA)}


class Consumer(consumer.Consumer):
    """The SDK's consumer, which also validates every message it receives against the JSON
    Schema that ships with the package, and keeps the frame headers' bytes as they came and
    how many parts each frame message had."""

    def __init__(self, *args, **kwargs):
        self._frame_bytes: list[tuple[str, bytes]] = []  # (stream, header)
        self._frame_parts: list[tuple[str, int]] = []  # (stream, parts of its message)
        super().__init__(*args, **kwargs)

    def _receive_parts(self) -> list[bytes]:
        parts = super()._receive_parts()
        header = json.loads(parts[1])
        VALIDATORS[header["schema"]].validate(header)
        if header["schema"] == FRAME_SCHEMA:
            self._frame_bytes.append((header["stream"], parts[1]))
            self._frame_parts.append((header["stream"], len(parts)))
        return parts

    def frame_bytes(self, stream: str) -> list[bytes]:
        """The headers of ``stream``'s frames received so far, byte for byte."""
        return [header for name, header in self._frame_bytes if name == stream]

    def part_counts(self, stream: str) -> list[int]:
        """How many parts each of ``stream``'s frame messages had: 2, or 3 with an image."""
        return [count for name, count in self._frame_parts if name == stream]


def assert_refused(header: dict, changes: list) -> None:
    """Each (change, problem) of `changes` made to a copy of frame `header`: the JSON Schema refuses
    it and the SDK's decoder refuses it with a ProtocolError matching `problem`."""
    import pytest

    for change, problem in changes:
        bad = json.loads(json.dumps(header))
        change(bad)
        with pytest.raises(jsonschema.ValidationError):
            VALIDATORS[FRAME_SCHEMA].validate(bad)
        with pytest.raises(ProtocolError, match=problem):
            FrameRecord.from_wire(bad)


def rectangle_mask(seq: int, index: int) -> tuple[np.ndarray, list[float]]:
    """A (HEIGHT, WIDTH) bool rectangle that moves with ``seq``, and its [x1, y1, x2, y2] box."""
    x1, y1 = (3 * seq + 20 * index) % (WIDTH - 12), (2 * seq + 9 * index) % (HEIGHT - 10)
    x2, y2 = x1 + 10 + index, y1 + 8
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[y1:y2, x1:x2] = True
    return mask, [float(x1), float(y1), float(x2), float(y2)]


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE with ``counts`` as str, the wire's form."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def make_instance(seq: int, index: int) -> InstanceRecord:
    mask, box = rectangle_mask(seq, index)
    class_id = 1 if index % 2 == 0 else 3
    return InstanceRecord(np.int32(class_id), LABELS[class_id], np.float32(0.9 - 0.1 * index), tuple(box),
                          encode_rle(mask))


def make_record(stream: str, seq: int, instances: int = 2, **overrides) -> FrameRecord:
    """A frame record as the scheduler hands it to the publisher (numpy scalars where the model
    gives them)."""
    fields = {"stream": stream, "seq": seq, "frame_index": seq, "pts": seq / 25.0,
              "captured_at": 1.7e9 + seq / 25.0, "published_at": None, "width": WIDTH, "height": HEIGHT,
              "dropped_before": 0, "timing_ms": {"infer": 10.0 + seq},
              "instances": tuple(make_instance(seq, index) for index in range(instances))}
    return FrameRecord(**{**fields, **overrides})


def start_publisher(output: OutputSection | None = None, class_names=None, live: bool = False, tracking=None,
                    publish_score: float = 0.0, **publish) -> tuple:
    """A publisher actor on a free port and the endpoint it bound; ``publish``: PublishSection fields;
    ``tracking``: a TrackingConfig (None: no tracking)."""
    publisher = PublisherActor.remote(PublishSection(**{"endpoint": ANY_PORT, **publish}), output, class_names, live,
                                      tracking, publish_score)
    return publisher, ray.get(publisher.ready.remote())


def stop_publisher(publisher) -> dict:
    """Closes the publisher and ends its actor; the final stats."""
    stats = ray.get(publisher.close.remote())
    ray.kill(publisher)
    return stats


def warm_up(publisher, consumers: list, stream: str = "warmup") -> int:
    """Publishes frames of ``stream`` until every consumer has received one (ZeroMQ's slow joiner).

    Consumers must subscribe to ``stream`` (or to all). Returns how many frames were published.
    """
    waiting = list(consumers)
    for seq in range(WARM_UP_LIMIT):
        if not waiting:
            return seq
        ray.get(publisher.publish.remote(make_record(stream, seq, instances=0)))
        waiting = [consumer for consumer in waiting if consumer.receive(timeout=0.05) is None]
    raise AssertionError(f"{len(waiting)} consumer(s) received nothing in {WARM_UP_LIMIT} frames")

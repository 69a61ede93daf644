"""Helpers for the publisher-side tests: records with real RLE masks, Ray, publishers, warm-up."""
import numpy as np
import pytest
import ray
from pycocotools import mask as mask_utils

from pipeline.publisher import PublisherActor

WIDTH, HEIGHT = 64, 48
LABELS = {1: "person", 3: "car"}
ANY_PORT = "tcp://127.0.0.1:*"
WARM_UP_LIMIT = 500  # frames; a guard against a subscriber that never connects, not a timing


@pytest.fixture(scope="module")
def ray_session():
    """One small Ray instance per test module (or the one already running)."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False)
    yield
    if started:
        ray.shutdown()


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


def make_record(stream: str, seq: int, instances: int = 2, **overrides) -> dict:
    """A pipeline record as the workers hand it to the publisher."""
    found = []
    for index in range(instances):
        mask, box = rectangle_mask(seq, index)
        class_id = 1 if index % 2 == 0 else 3
        found.append({"class_id": np.int32(class_id), "label": LABELS[class_id],
                      "score": np.float32(0.9 - 0.1 * index), "box": box, "mask": encode_rle(mask)})
    record = {"stream": stream, "seq": seq, "frame_index": seq, "pts": seq / 25.0,
              "captured_at": 1.7e9 + seq / 25.0, "width": WIDTH, "height": HEIGHT,
              "dropped_before": 0, "timing_ms": {"infer": 10.0 + seq}, "instances": found}
    record.update(overrides)
    return record


def start_publisher(**config) -> tuple:
    """A publisher actor on a free port and the endpoint it bound."""
    publisher = PublisherActor.remote({"endpoint": ANY_PORT, **config})
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

"""Publisher cost per frame: encode (v1 header to JSON) and encode+send, for 20 and 100 instances.

    python bench/publisher.py [--frames N] [--width W --height H]

Three measurements per instance count, on 1280x720 frames with elliptical masks encoded as COCO
RLE, and a real subscriber on 127.0.0.1 receiving every message:
- ``encode``: ``encode_message`` of a frame record (its header to JSON, and the topic), per frame;
- ``publish``: ``Publisher.publish`` in this process (reorder bookkeeping, encode, ZeroMQ send);
- ``actor``: frames/s through ``PublisherActor.publish.remote`` (adds Ray's call and the record's
  serialisation), from the first call to the subscriber's last message;
- ``zones``: the zones stage (``pipeline.zones.ZoneStage.apply``, which the publisher runs per
  frame when ``zones:`` are configured) with three regions and two counting lines, every
  instance in a track, per frame.

Prints a table and writes bench/results/publisher.json. Times vary with the machine's load:
compare rows of one run.
"""
import argparse
import dataclasses
import json
import platform
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import ray
import zmq
from pycocotools import mask as mask_utils

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.config import PublishSection  # noqa: E402
from pipeline.protocol import FrameRecord, InstanceRecord, encode_message, topic  # noqa: E402
from pipeline.publisher import Publisher, PublisherActor  # noqa: E402
from pipeline.zones import ZoneConfig, ZoneStage  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "publisher.json"
INSTANCE_COUNTS = (20, 100)
LABELS = ("person", "car", "bicycle", "dog")


def make_instances(count: int, width: int, height: int, rng: np.random.Generator) -> tuple[InstanceRecord, ...]:
    """``count`` instances with filled-ellipse masks of varied sizes."""
    instances = []
    for index in range(count):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(10, width // 8)), int(rng.integers(10, height // 6)))
        mask = np.zeros((height, width), np.uint8)
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, cv2.FILLED)
        rle = mask_utils.encode(np.asfortranarray(mask))
        x, y, w, h = mask_utils.toBbox(rle)
        instances.append(InstanceRecord(index % len(LABELS), LABELS[index % len(LABELS)],
                                         float(rng.uniform(0.05, 1.0)), (x, y, x + w, y + h),
                                         {"size": [height, width], "counts": rle["counts"].decode("ascii")}))
    return tuple(instances)


def make_records(stream: str, frames: int, instances: tuple[InstanceRecord, ...], width: int,
                 height: int) -> list[FrameRecord]:
    """In-order records of one stream sharing the same instances."""
    return [FrameRecord(stream, seq, seq, seq / 25.0, time.time(), None, width, height, 0,
                        {"decode": 1.0, "infer": 500.0}, instances)
            for seq in range(frames)]


def warm_up_records(width: int, height: int):
    """Endless in-order records of the ``warmup`` stream, for the subscriber's slow join."""
    template = make_records("warmup", 1, (), width, height)[0]
    seq = 0
    while True:
        yield dataclasses.replace(template, seq=seq, frame_index=seq)
        seq += 1


class Subscriber:
    """A SUB socket in a thread that counts the frames of one stream until its EOS."""

    def __init__(self, endpoint: str, stream: str):
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.rcvhwm = 0  # keep every message: the bench measures the sender, not drops
        self._socket.subscribe(topic(stream))
        self._socket.subscribe(topic("warmup"))
        self._socket.connect(endpoint)
        self._stream_topic = topic(stream)
        self.received = 0
        self.message_bytes = 0
        self.ended_at = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def wait_connected(self, publish_warm_up) -> None:
        """Calls ``publish_warm_up()`` until a message arrives (ZeroMQ's slow joiner)."""
        while not self._socket.poll(50):
            publish_warm_up()
        self._thread.start()

    def _run(self) -> None:
        while True:
            parts = self._socket.recv_multipart()
            if parts[0] != self._stream_topic:
                continue
            if b'"schema":"maskstream.eos/1"' in parts[1]:
                self.ended_at = time.perf_counter()
                return
            self.received += 1
            self.message_bytes = sum(len(part) for part in parts)

    def join(self) -> None:
        self._thread.join()
        self._socket.close(linger=0)
        self._context.term()


def percentiles(samples_s: list[float]) -> dict:
    p50, p99 = np.percentile(np.array(samples_s) * 1e3, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "mean_ms": float(np.mean(samples_s) * 1e3)}


def time_encode(records: list[dict]) -> dict:
    samples = []
    for record in records:
        start = time.perf_counter()
        encode_message(dataclasses.replace(record, published_at=time.time()))
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def time_publish_in_process(records: list[dict], width: int, height: int) -> tuple[dict, int]:
    """Per-frame ``Publisher.publish`` times with a live subscriber; the message size in bytes."""
    publisher = Publisher(PublishSection(endpoint="tcp://127.0.0.1:*", hwm=0))
    subscriber = Subscriber(publisher.ready(), records[0].stream)
    warm_up = warm_up_records(width, height)
    subscriber.wait_connected(lambda: publisher.publish(next(warm_up)))
    samples = []
    for record in records:
        start = time.perf_counter()
        publisher.publish(record)
        samples.append(time.perf_counter() - start)
    publisher.end_stream(records[0].stream, len(records))
    subscriber.join()
    publisher.close()
    assert subscriber.received == len(records), "the subscriber missed frames"
    return percentiles(samples), subscriber.message_bytes


def bench_zones(width: int, height: int) -> list[ZoneConfig]:
    """Three regions (the left third, the lower half, a diamond in the middle) and two lines."""
    w, h = width, height
    return [ZoneConfig("left", polygon=[[0, 0], [w / 3, 0], [w / 3, h], [0, h]]),
            ZoneConfig("lower", polygon=[[0, h / 2], [w, h / 2], [w, h], [0, h]]),
            ZoneConfig("diamond", polygon=[[w / 2, h / 4], [3 * w / 4, h / 2], [w / 2, 3 * h / 4], [w / 4, h / 2]]),
            ZoneConfig("middle", line=[[w / 2, 0], [w / 2, h]]), ZoneConfig("across", line=[[0, h / 2], [w, h / 2]])]


def time_zones(records: list[FrameRecord], width: int, height: int) -> dict:
    """Per-frame ``ZoneStage.apply`` times, every instance in a track of its own."""
    stage = ZoneStage(bench_zones(width, height), records[0].stream)
    tracked = tuple(dataclasses.replace(inst, track_id=i + 1) for i, inst in enumerate(records[0].instances))
    samples = []
    for record in records:
        record = dataclasses.replace(record, instances=tracked, tracks_ended=())
        start = time.perf_counter()
        stage.apply(record)
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def time_actor(records: list[dict], width: int, height: int) -> float:
    """Frames/s through the Ray actor, first call to the subscriber's EOS."""
    publisher = PublisherActor.remote(PublishSection(endpoint="tcp://127.0.0.1:*", hwm=0))
    subscriber = Subscriber(ray.get(publisher.ready.remote()), records[0].stream)
    warm_up = warm_up_records(width, height)
    subscriber.wait_connected(lambda: ray.get(publisher.publish.remote(next(warm_up))))
    start = time.perf_counter()
    for record in records:
        publisher.publish.remote(record)
    publisher.end_stream.remote(records[0].stream, len(records))
    subscriber.join()
    ray.get(publisher.close.remote())
    ray.kill(publisher)
    assert subscriber.received == len(records), "the subscriber missed frames"
    return len(records) / (subscriber.ended_at - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    rows = []
    for count in INSTANCE_COUNTS:
        instances = make_instances(count, args.width, args.height, rng)
        records = make_records(f"bench{count}", args.frames, instances, args.width, args.height)
        encode = time_encode(records)
        publish, message_bytes = time_publish_in_process(records, args.width, args.height)
        rows.append({"instances": count, "message_bytes": message_bytes, "encode": encode,
                     "publish": publish, "actor_frames_per_s": time_actor(records, args.width, args.height),
                     "zones": time_zones(records, args.width, args.height)})
    ray.shutdown()

    print(f"publisher, {args.frames} frames of {args.width}x{args.height} per row")
    print(f"{'instances':>9} {'bytes':>8} {'encode p50/p99 ms':>18} {'publish p50/p99 ms':>19} "
          f"{'in-process fps':>14} {'actor fps':>9} {'zones p50/p99 ms':>17}")
    for row in rows:
        print(f"{row['instances']:>9} {row['message_bytes']:>8} "
              f"{row['encode']['p50_ms']:>8.3f}/{row['encode']['p99_ms']:<9.3f} "
              f"{row['publish']['p50_ms']:>8.3f}/{row['publish']['p99_ms']:<10.3f} "
              f"{1e3 / row['publish']['mean_ms']:>14.0f} {row['actor_frames_per_s']:>9.0f} "
              f"{row['zones']['p50_ms']:>8.3f}/{row['zones']['p99_ms']:<8.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "publisher", "date": time.strftime("%Y-%m-%d"), "machine": platform.processor()
        or platform.machine(), "frames": args.frames, "width": args.width, "height": args.height,
        "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""The publisher actor over real ZeroMQ sockets: order, duplicates, EOS, late joiners, masks.

Every message the tests receive is checked against the protocol's JSON Schema (wire_helpers.Consumer).
"""
import json
from dataclasses import replace

import cv2
import pytest
import ray

from models.errors import ConfigError
from pipeline.config import OutputSection, PublishSection
from pipeline.consumer import Gap
from pipeline.protocol import EndOfStream, FrameRecord, encode_header
from pipeline.publisher import Publisher, PublisherActor, PublisherError
from pipeline.sources import FALLBACK_FPS
from pipeline.tracking import TrackingConfig
from tests.wire_helpers import (
    HEIGHT,
    WIDTH,
    Consumer,
    make_record,
    rectangle_mask,
    start_publisher,
    stop_publisher,
    warm_up,
)

pytestmark = pytest.mark.usefixtures("ray_cluster")


def messages_of(consumer: Consumer, stream: str) -> list:
    """Every frame and EOS of ``stream`` until the consumer is done."""
    return [message for message in consumer.messages() if message.stream == stream]


def test_out_of_order_records_go_out_in_seq_order_once_then_eos():
    publisher, endpoint = start_publisher()
    with Consumer(endpoint, streams=["warmup", "cam1"], timeout=30) as consumer:
        warm_frames = warm_up(publisher, [consumer])
        for batch in [[3, 0, 2], [2, 1, 0], [5], [4, 3]]:   # a batch's records come in one call
            if len(batch) == 1:
                publisher.publish.remote(make_record("cam1", batch[0]))
            else:
                publisher.publish_many.remote([make_record("cam1", seq) for seq in batch])
        publisher.end_stream.remote("cam1", 6)
        publisher.end_stream.remote("warmup", warm_frames)
        received = messages_of(consumer, "cam1")
    stats = stop_publisher(publisher)

    assert [message.seq for message in received[:-1]] == [0, 1, 2, 3, 4, 5]
    assert received[-1] == EndOfStream("cam1", 6)
    first = received[0]
    assert first.published_at > 0 and set(first.timing_ms) == {"infer", "publish"}
    cam1 = stats["streams"]["cam1"]
    assert (cam1["published"], cam1["duplicates_dropped"], cam1["last_seq"]) == (6, 3, 5)
    assert cam1["ended"] and cam1["waiting"] == 0
    assert set(cam1["latency_ms"]) == {"infer", "publish", "end_to_end"}
    assert cam1["latency_ms"]["infer"]["count"] == 6


def test_eos_waits_for_the_last_missing_frame():
    publisher, endpoint = start_publisher()
    with Consumer(endpoint, streams=["warmup", "cam1"], timeout=30) as consumer:
        publisher.end_stream.remote("warmup", warm_up(publisher, [consumer]))
        publisher.publish.remote(make_record("cam1", 1))
        publisher.end_stream.remote("cam1", 3)
        publisher.publish.remote(make_record("cam1", 2))
        ray.get(publisher.publish.remote(make_record("cam1", 0)))
        received = messages_of(consumer, "cam1")
    stop_publisher(publisher)
    assert [type(message) for message in received] == [FrameRecord, FrameRecord, FrameRecord, EndOfStream]
    assert [message.seq for message in received[:3]] == [0, 1, 2]


def test_late_joiner_starts_at_the_next_frame():
    publisher, endpoint = start_publisher()
    with Consumer(endpoint, streams=["cam1"], timeout=30) as early:
        seq = warm_up(publisher, [early], stream="cam1")  # seqs 0..seq-1 are out
        published_before_joining = seq
        with Consumer(endpoint, streams=["cam1"], timeout=30) as late:
            while (first := late.receive(timeout=0.05)) is None:  # the late one's own slow join
                publisher.publish.remote(make_record("cam1", seq))
                seq += 1
            # it says what it missed, then gives the frames from where it joined
            assert first == Gap("cam1", 0, first.last, "before joining") and first.last >= published_before_joining - 1
            first = late.receive(timeout=30)
            for more in range(seq, seq + 3):
                publisher.publish.remote(make_record("cam1", more))
            publisher.end_stream.remote("cam1", seq + 3)
            late_seqs = [first.seq] + [frame.seq for frame in late]
        early_seqs = [frame.seq for frame in early]
    stop_publisher(publisher)
    assert late_seqs[0] >= published_before_joining  # nothing from before it joined...
    assert late_seqs == list(range(late_seqs[0], seq + 3))  # ...then every frame, in order
    assert early_seqs == list(range(early_seqs[0], seq + 3))


def test_masks_decode_to_the_frame_size_and_match_what_was_encoded():
    publisher, endpoint = start_publisher()
    with Consumer(endpoint, streams=["warmup", "cam1"], timeout=30) as consumer:
        publisher.end_stream.remote("warmup", warm_up(publisher, [consumer]))
        publisher.publish.remote(make_record("cam1", 0, instances=3))
        publisher.end_stream.remote("cam1", 1)
        frame = next(iter(message for message in messages_of(consumer, "cam1")))
    stop_publisher(publisher)
    assert frame.masks.shape == (3, HEIGHT, WIDTH) and frame.masks.dtype == bool
    for index, instance in enumerate(frame.instances):
        expected, box = rectangle_mask(0, index)
        assert (frame.masks[index] == expected).all() and (instance.mask == expected).all()
        assert list(instance.box) == box


def test_close_sends_what_waits_and_eos_for_open_streams():
    publisher, endpoint = start_publisher()
    with Consumer(endpoint, streams=["warmup", "cam1"], timeout=30) as consumer:
        warm_up(publisher, [consumer])
        publisher.publish.remote(make_record("cam1", 0))
        publisher.publish.remote(make_record("cam1", 2))  # seq 1 never comes: Ctrl-C mid-run
        stats = ray.get(publisher.close.remote())
        received = messages_of(consumer, "cam1")
    ray.kill(publisher)
    assert [message.seq for message in received[0:3:2]] == [0, 2]
    assert received[1] == Gap("cam1", 1, 1, "not received")  # the consumer says what it never got
    assert received[3] == EndOfStream("cam1", 3, "stopped")
    assert (stats["streams"]["cam1"]["missing"], stats["streams"]["cam1"]["published"]) == (1, 2)
    assert stats["streams"]["warmup"]["ended"]


def test_a_bad_record_is_refused_on_arrival_and_its_stream_goes_on():
    publisher, endpoint = start_publisher()
    bad = make_record("cam1", 1, width=WIDTH + 1)  # masks of another size than the frame
    with pytest.raises(ray.exceptions.RayTaskError, match=r"record of stream 'cam1' seq 1: a mask of size"):
        ray.get(publisher.publish.remote(bad))  # ahead of its turn: refused now, not when seq 0 comes
    with Consumer(endpoint, streams=["warmup", "cam1"], timeout=30) as consumer:
        publisher.end_stream.remote("warmup", warm_up(publisher, [consumer]))
        ray.get(publisher.publish.remote(make_record("cam1", 0)))
        ray.get(publisher.publish.remote(make_record("cam1", 1)))
        publisher.end_stream.remote("cam1", 2)
        received = messages_of(consumer, "cam1")
    stop_publisher(publisher)
    assert [getattr(message, "seq", "eos") for message in received] == [0, 1, "eos"]


@pytest.mark.slow
def test_endpoint_in_use_is_one_line_naming_it():
    publisher, endpoint = start_publisher()
    second = PublisherActor.remote(PublishSection(endpoint=endpoint))
    with pytest.raises(ray.exceptions.RayActorError) as failure:
        ray.get(second.ready.remote())
    assert f"publish endpoint {endpoint}: Address already in use" in str(failure.value)
    stop_publisher(publisher)


@pytest.mark.parametrize("publish, output, error, problem", [
    (PublishSection(hwm=-1), None, ConfigError, "^publish.hwm: must be >= 0$"),
    (PublishSection(linger_ms=-2), None, ConfigError, "^publish.linger_ms: must be >= 0, or -1"),
    (PublishSection(), OutputSection(overlay=True), ConfigError, "^output.overlay: needs output.dir$"),
    (PublishSection(), OutputSection(dir="/dev/null/out"), PublisherError,
     "^output directory /dev/null/out: Not a directory$"),
])
def test_bad_configs_are_refused_with_one_line(publish, output, error, problem):
    """The publisher takes the pipeline config's own sections and their one validation."""
    with pytest.raises(error, match=problem):
        Publisher(publish, output)


@pytest.mark.parametrize("overlay_fps, source_fps, expected", [
    (None, 12.5, 12.5),           # the source's own rate
    (5.0, 12.5, 5.0),             # output.overlay_fps wins
    (None, None, FALLBACK_FPS),   # a stream never opened: as a source that does not say its rate
])
def test_overlay_video_takes_the_source_frame_rate_unless_the_config_sets_one(tmp_path, overlay_fps, source_fps,
                                                                             expected):
    publisher = Publisher(PublishSection(endpoint="tcp://127.0.0.1:*"),
                          OutputSection(dir=str(tmp_path), overlay=True, overlay_fps=overlay_fps))
    if source_fps is not None:
        publisher.open_stream("cam1", source_fps)
    for seq in range(3):
        publisher.publish(make_record("cam1", seq))
    publisher.close()
    capture = cv2.VideoCapture(str(tmp_path / "cam1.overlay.mp4"))
    assert (capture.get(cv2.CAP_PROP_FPS), capture.get(cv2.CAP_PROP_FRAME_COUNT)) == (expected, 3)
    capture.release()


def test_with_tracking_every_frame_carries_track_ids_and_eos_the_tracks_still_alive(tmp_path):
    """Records arriving out of order are tracked in seq order: the two moving rectangles of
    make_record keep one id each; every message validates against the schema (the helper
    Consumer checks), the files carry the ids, and the MOTS / MOT files list every tracked instance."""
    # make_record's cars score 0.8: thresholds pinned at it, so that they start tracks whatever the defaults
    tracking = TrackingConfig(high_score=0.8, new_track_score=0.8)
    publisher, endpoint = start_publisher(OutputSection(dir=str(tmp_path)), ["background", "person", "bicycle", "car"],
                                          tracking=tracking, publish_score=0.5)
    with Consumer(endpoint, streams=["warmup", "cam1"], timeout=30) as consumer:
        publisher.end_stream.remote("warmup", warm_up(publisher, [consumer]))
        for batch in [[2, 0], [1, 4], [3, 5]]:
            publisher.publish_many.remote([make_record("cam1", seq) for seq in batch])
        publisher.end_stream.remote("cam1", 6)
        received = messages_of(consumer, "cam1")
        raw = consumer.frame_bytes("cam1")
    stop_publisher(publisher)
    *frames, eos = received
    assert [f.seq for f in frames] == list(range(6))
    # the stream's first frame gives its tracks ids at once: the person (index 0) 1, the car 2
    assert [[(i.label, i.track_id) for i in f.instances] for f in frames] == [[("person", 1), ("car", 2)]] * 6
    assert all(f.tracks_ended == () and "track" in f.timing_ms for f in frames)
    assert eos == EndOfStream("cam1", 6, "end", None, (1, 2))
    assert json.loads(raw[0])["instances"][0]["track_id"] == 1
    assert (tmp_path / "cam1.jsonl").read_bytes().splitlines() == raw
    results = json.loads((tmp_path / "cam1.coco_results.json").read_text())
    assert [r["track_id"] for r in results] == [1, 2] * 6
    mots = [line.split(" ") for line in (tmp_path / "cam1.mots.txt").read_text().splitlines()]
    assert [(int(n), int(tid), int(cls)) for n, tid, cls, *_ in mots] == [(n, t, c) for n in range(1, 7) for t, c in ((1, 1), (2, 3))]
    mot = [line.split(",") for line in (tmp_path / "cam1.mot.txt").read_text().splitlines()]
    x1, y1, x2, y2 = rectangle_mask(0, 0)[1]
    assert mot[0][:6] == ["1", "1", f"{x1:.2f}", f"{y1:.2f}", f"{x2 - x1:.2f}", f"{y2 - y1:.2f}"] and len(mot) == 12


def test_without_tracking_nothing_of_it_is_on_the_wire_or_in_the_files(tmp_path):
    """tracking.enabled false: each header is byte for byte the record as given (the untracked
    output: no instance dropped, no field added), but for the publisher's own timing fields."""
    publisher, endpoint = start_publisher(OutputSection(dir=str(tmp_path)), tracking=TrackingConfig(enabled=False),
                                          publish_score=0.99)
    records = [make_record("cam1", seq) for seq in range(3)]
    with Consumer(endpoint, streams=["warmup", "cam1"], timeout=30) as consumer:
        publisher.end_stream.remote("warmup", warm_up(publisher, [consumer]))
        publisher.publish_many.remote(records)
        publisher.end_stream.remote("cam1", 3)
        received = messages_of(consumer, "cam1")
        raw = consumer.frame_bytes("cam1")
    stop_publisher(publisher)
    assert received[-1] == EndOfStream("cam1", 3) and received[0].tracks_ended is None
    for record, header in zip(records, raw, strict=True):
        sent = json.loads(header)
        assert header == encode_header(replace(record, published_at=sent["published_at"], timing_ms=sent["timing_ms"]))
    assert set(json.loads(raw[0])["timing_ms"]) == {"infer", "publish"}
    assert sorted(p.name for p in tmp_path.glob("cam1.*")) == ["cam1.coco_images.json", "cam1.coco_results.json",
                                                               "cam1.eos.json", "cam1.jsonl"]   # no MOTS or MOT file

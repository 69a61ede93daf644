"""Wire protocol v1: headers, EOS, topics, and what a decoder refuses."""
import json

import numpy as np
import pytest
import zmq

from pipeline.protocol import (EOS_SCHEMA, FRAME_FIELDS, FRAME_SCHEMA, ProtocolError, decode_message,
                               encode_message, eos_header, frame_header, is_eos, topic)
from wire_helpers import make_record


def test_frame_header_round_trips_with_exactly_the_protocol_fields():
    record = make_record("cam1", 7, frame_ref=["a reference to the pixels"])
    header = frame_header(record, published_at=1.7e9 + 1)
    parts = encode_message(header)
    assert parts[0] == b"maskstream/cam1/"
    decoded = decode_message(parts)
    assert decoded == header
    assert list(decoded) == ["schema", *FRAME_FIELDS]
    assert decoded["schema"] == FRAME_SCHEMA and not is_eos(decoded)
    assert decoded["published_at"] == 1.7e9 + 1
    first = decoded["instances"][0]
    assert list(first) == ["class_id", "label", "score", "box", "mask"]
    assert type(first["class_id"]) is int and first["score"] == pytest.approx(0.9)
    assert first["mask"] == record["instances"][0]["mask"]


def test_numpy_and_bytes_values_become_plain_json():
    record = make_record("cam1", np.int64(4), pts=np.float32(0.5))
    record["instances"][0]["mask"]["counts"] = record["instances"][0]["mask"]["counts"].encode()
    header = frame_header(record, published_at=2.0)
    text = encode_message(header)[1].decode("utf-8")
    assert json.loads(text)["pts"] == 0.5 and json.loads(text)["seq"] == 4
    assert isinstance(json.loads(text)["instances"][0]["mask"]["counts"], str)


def test_eos_round_trip():
    decoded = decode_message(encode_message(eos_header("cam10", 42)))
    assert decoded == {"schema": EOS_SCHEMA, "stream": "cam10", "frames": 42}
    assert is_eos(decoded)


def test_a_record_missing_fields_gets_one_line_naming_them():
    record = make_record("cam1", 3)
    del record["width"], record["timing_ms"]
    with pytest.raises(ProtocolError, match=r"^record of stream 'cam1' seq 3: missing width, timing_ms$"):
        frame_header(record, published_at=0.0)


@pytest.mark.parametrize("parts, problem", [
    ([b"maskstream/cam1/", b'{"schema": "maskstream.frame/2", "stream": "cam1"}'], "unknown schema"),
    ([b"maskstream/cam1/", b'{"schema": "maskstream.eos/1", "stream": "cam2", "frames": 1}'],
     "header names stream 'cam2'"),
    ([b"maskstream/cam1/", b"\xff not json"], "not UTF-8 JSON"),
    ([b"maskstream/cam1/"], "1 parts"),
])
def test_decoder_refuses_what_is_not_v1(parts, problem):
    with pytest.raises(ProtocolError, match=problem):
        decode_message(parts)


@pytest.mark.parametrize("stream_id", ["", "a/b", None])
def test_stream_ids_that_would_break_topics_are_refused(stream_id):
    with pytest.raises(ProtocolError, match="must be a non-empty string without '/'"):
        topic(stream_id)


def test_cam1_subscriber_does_not_receive_cam10():
    context = zmq.Context()
    publisher, subscriber = context.socket(zmq.PUB), context.socket(zmq.SUB)
    try:
        publisher.bind("tcp://127.0.0.1:*")
        subscriber.subscribe(topic("cam1"))
        subscriber.connect(publisher.last_endpoint.decode())
        # Slow joiner: send cam1 frames until the subscription has reached the publisher.
        while not subscriber.poll(50):
            publisher.send_multipart(encode_message(eos_header("cam1", 0)))
        for frames in range(3):
            publisher.send_multipart(encode_message(eos_header("cam10", frames)))
        publisher.send_multipart(encode_message(eos_header("cam1", 99)))
        received = [decode_message(subscriber.recv_multipart())]
        while received[-1]["frames"] != 99:
            received.append(decode_message(subscriber.recv_multipart()))
        # cam10's three messages were sent before the last cam1 one, and never came.
        assert {message["stream"] for message in received} == {"cam1"}
    finally:
        publisher.close(linger=0)
        subscriber.close(linger=0)
        context.term()

"""Wire protocol v1: frame records and their headers, EOS, topics, the JSON Schemas, and what a
decoder refuses."""
import dataclasses
import fnmatch
import json
import tomllib
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import zmq

from pipeline.protocol import (
    EOS_SCHEMA,
    FRAME_FIELDS,
    FRAME_SCHEMA,
    EndOfStream,
    FrameRecord,
    ProtocolError,
    decode_message,
    encode_header,
    encode_message,
    json_schema,
    topic,
)
from tests.wire_helpers import VALIDATORS, assert_refused, make_record, rectangle_mask

REPO = Path(__file__).resolve().parent.parent

# What the publisher sent for make_record("cam1", 7) published at 1.7e9 + 1 before the frame record
# was typed: existing consumers read exactly these bytes.
V1_FRAME_BYTES = (
    b'{"schema":"maskstream.frame/1","stream":"cam1","seq":7,"frame_index":7,"pts":0.28,'
    b'"captured_at":1700000000.28,"published_at":1700000001.0,"width":64,"height":48,"dropped_before":0,'
    b'"timing_ms":{"infer":17.0},"instances":[{"class_id":1,"label":"person","score":0.8999999761581421,'
    b'"box":[21.0,14.0,31.0,22.0],"mask":{"size":[48,64],"counts":"no08X100000000000000000Ra1"}},'
    b'{"class_id":3,"label":"car","score":0.800000011920929,"box":[41.0,23.0,52.0,31.0],'
    b'"mask":{"size":[48,64],"counts":"Wn18X10000000000000000000Ya0"}}]}')


def published(record: FrameRecord, at: float = 1.7e9 + 1) -> FrameRecord:
    return dataclasses.replace(record, published_at=at)


def test_frame_header_bytes_are_those_existing_consumers_read():
    parts = encode_message(published(make_record("cam1", 7, pixels="a handle to the pixels")))
    assert parts == [b"maskstream/cam1/", V1_FRAME_BYTES]


def test_frame_record_round_trips_with_exactly_the_protocol_fields():
    record = published(make_record("cam1", 7))
    decoded = decode_message(encode_message(record))
    assert isinstance(decoded, FrameRecord) and decoded == record
    header = decoded.to_wire()
    assert list(header) == ["schema", *FRAME_FIELDS]
    assert FRAME_FIELDS == ("stream", "seq", "frame_index", "pts", "captured_at", "published_at", "width",
                            "height", "dropped_before", "timing_ms", "instances")
    first = header["instances"][0]
    assert list(first) == ["class_id", "label", "score", "box", "mask"]
    assert type(first["class_id"]) is int and first["score"] == pytest.approx(0.9)
    assert (decoded.masks[0] == rectangle_mask(7, 0)[0]).all() and decoded.masks.shape == (2, 48, 64)
    assert (decoded.instances[1].mask == rectangle_mask(7, 1)[0]).all()


def test_numpy_and_bytes_values_become_plain_json():
    record = published(make_record("cam1", np.int64(4), pts=np.float32(0.5)), at=np.float64(2.0))
    instance = record.instances[0]
    as_bytes = dataclasses.replace(instance, rle={**instance.rle, "counts": instance.rle["counts"].encode()})
    header = json.loads(encode_header(dataclasses.replace(record, instances=(as_bytes,))))
    assert header["pts"] == 0.5 and header["seq"] == 4 and header["published_at"] == 2.0
    assert isinstance(header["instances"][0]["mask"]["counts"], str)


def test_eos_round_trip():
    parts = encode_message(EndOfStream("cam10", 42))
    assert parts == [b"maskstream/cam10/",
                     b'{"schema":"maskstream.eos/1","stream":"cam10","frames":42,"reason":"end"}']
    assert decode_message(parts) == EndOfStream("cam10", 42)
    failed = EndOfStream("ped", 4, "error", "ped: its ingest actor died")
    assert decode_message(encode_message(failed)) == failed
    assert failed.describe() == "ped ended after 4 frames (error: ped: its ingest actor died)"
    # a publisher from before the reason existed: its EOS reads as an end
    old = [b"maskstream/cam10/", b'{"schema":"maskstream.eos/1","stream":"cam10","frames":42}']
    assert decode_message(old) == EndOfStream("cam10", 42, "end")


def test_a_header_missing_fields_gets_one_line_naming_them():
    header = published(make_record("cam1", 3)).to_wire()
    del header["width"], header["timing_ms"]
    with pytest.raises(ProtocolError, match=r"^frame header of stream 'cam1' seq 3: missing width, timing_ms$"):
        FrameRecord.from_wire(header)


def test_the_publisher_side_check_names_what_cannot_be_published():
    with pytest.raises(ProtocolError, match=r"^record of stream 'cam1' frame 3: seq None is not a number from 0$"):
        dataclasses.replace(make_record("cam1", 3), seq=None).check()
    wrong_size = make_record("cam1", 3, width=32)
    with pytest.raises(ProtocolError, match=r"seq 3: a mask of size \[48, 64\] in a 48x32 frame$"):
        wrong_size.check()
    make_record("cam1", 3).check()


@pytest.mark.parametrize("parts, problem", [
    ([b"maskstream/cam1/", b'{"schema": "maskstream.frame/2", "stream": "cam1"}'], "unknown schema"),
    ([b"maskstream/cam1/", b'{"schema": "maskstream.eos/1", "stream": "cam2", "frames": 1}'],
     "header names stream 'cam2'"),
    ([b"maskstream/cam1/", b"\xff not json"], "not UTF-8 JSON"),
    ([b"maskstream/cam1/"], "1 parts"),
    ([b"maskstream/cam1/", b"{}", b"", b""], "4 parts"),
])
def test_decoder_refuses_what_is_not_v1(parts, problem):
    with pytest.raises(ProtocolError, match=problem):
        decode_message(parts)


@pytest.mark.parametrize("stream_id", ["", "a/b", None])
def test_stream_ids_that_would_break_topics_are_refused(stream_id):
    with pytest.raises(ProtocolError, match="must be a non-empty string without '/'"):
        topic(stream_id)


def test_json_schemas_are_valid_and_accept_what_the_publisher_sends():
    for schema in (FRAME_SCHEMA, EOS_SCHEMA):
        jsonschema.Draft202012Validator.check_schema(json_schema(schema))
        assert json_schema(schema)["title"] == schema
    VALIDATORS[FRAME_SCHEMA].validate(json.loads(V1_FRAME_BYTES))
    VALIDATORS[FRAME_SCHEMA].validate(published(make_record("cam1", 0, instances=0)).to_wire())
    VALIDATORS[EOS_SCHEMA].validate(EndOfStream("cam1", 0).to_wire())
    VALIDATORS[EOS_SCHEMA].validate(EndOfStream("cam1", 0, "error", "cam1: no such file").to_wire())


@pytest.mark.parametrize("change, path", [
    (lambda h: h.pop("published_at"), "published_at"),
    (lambda h: h.update(seq=-1), "seq"),
    (lambda h: h.update(stream="a/b"), "stream"),
    (lambda h: h.update(width=64.5), "width"),
    (lambda h: h["instances"][0].update(box=[1.0, 2.0, 3.0]), "box"),
    (lambda h: h["instances"][1]["mask"].update(counts=7), "counts"),
    (lambda h: h["instances"][0].pop("label"), "label"),
    (lambda h: h.update(schema="maskstream.frame/2"), "schema"),
])
def test_the_frame_schema_refuses_malformed_headers(change, path):
    header = json.loads(V1_FRAME_BYTES)
    change(header)
    with pytest.raises(jsonschema.ValidationError) as error:
        VALIDATORS[FRAME_SCHEMA].validate(header)
    assert path in error.value.message or path in list(error.value.absolute_path)


def test_the_schemas_ship_as_package_data():
    """An installed package finds its schemas through importlib.resources (json_schema); the
    files must therefore be package data of `pipeline`."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["pipeline"]
    files = sorted(path.relative_to(REPO / "pipeline").as_posix() for path in (REPO / "pipeline" / "schema").iterdir())
    assert files == ["schema/maskstream.eos-1.json", "schema/maskstream.frame-1.json"]
    assert all(any(fnmatch.fnmatch(name, pattern) for pattern in patterns) for name in files)


def test_cam1_subscriber_does_not_receive_cam10():
    context = zmq.Context()
    publisher, subscriber = context.socket(zmq.PUB), context.socket(zmq.SUB)
    try:
        publisher.bind("tcp://127.0.0.1:*")
        subscriber.subscribe(topic("cam1"))
        subscriber.connect(publisher.last_endpoint.decode())
        # Slow joiner: send cam1 frames until the subscription has reached the publisher.
        while not subscriber.poll(50):
            publisher.send_multipart(encode_message(EndOfStream("cam1", 0)))
        for frames in range(3):
            publisher.send_multipart(encode_message(EndOfStream("cam10", frames)))
        publisher.send_multipart(encode_message(EndOfStream("cam1", 99)))
        received = [decode_message(subscriber.recv_multipart())]
        while received[-1].frames != 99:
            received.append(decode_message(subscriber.recv_multipart()))
        # cam10's three messages were sent before the last cam1 one, and never came.
        assert {message.stream for message in received} == {"cam1"}
    finally:
        publisher.close(linger=0)
        subscriber.close(linger=0)
        context.term()


def test_track_ids_round_trip_validate_and_malformed_ones_are_refused():
    tracked = dataclasses.replace(published(make_record("cam1", 2)), tracks_ended=(3, 9),
                                  instances=tuple(dataclasses.replace(inst, track_id=t)
                                                  for inst, t in zip(make_record("cam1", 2).instances, (4, 0))))
    header = tracked.to_wire()
    VALIDATORS[FRAME_SCHEMA].validate(header)
    assert [inst.get("track_id") for inst in header["instances"]] == [4, 0] and header["tracks_ended"] == [3, 9]
    assert decode_message(encode_message(tracked)) == tracked
    eos = EndOfStream("cam1", 3, tracks_ended=(4,))
    VALIDATORS[EOS_SCHEMA].validate(eos.to_wire())
    assert decode_message(encode_message(eos)) == eos
    assert_refused(header, [(lambda h: h["instances"][0].update(track_id=-1), "track_id is not an integer >= 0"),
                            (lambda h: h["instances"][0].update(track_id="4"), "track_id is not an integer >= 0"),
                            (lambda h: h.update(tracks_ended=[3, 3]), "tracks_ended is not a list of distinct"),
                            (lambda h: h.update(tracks_ended=[0]), "tracks_ended is not a list of distinct")])

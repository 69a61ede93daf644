"""Frame images on the wire (``publish.images: jpeg``): the JPEG part through a real publisher and
subscriber, its header field and schema, what a decoder refuses, and the SDK's ``frame.image``.

Every message the publisher tests receive is checked against the JSON Schema (wire_helpers.Consumer).
"""
import dataclasses
import json
import re

import cv2
import jsonschema
import numpy as np
import pytest

from models.errors import ProtocolError, SinkError
from pipeline.images import EncodedImage, encode_jpeg, scaled_size
from pipeline.protocol import (
    FRAME_SCHEMA,
    EndOfStream,
    FrameRecord,
    decode_message,
    encode_message,
)
from pipeline.sinks import OverlayVideoSink
from tests.wire_helpers import (
    HEIGHT,
    VALIDATORS,
    WIDTH,
    Consumer,
    make_record,
    start_publisher,
    stop_publisher,
    warm_up,
)
from workers.frames import put_frames

FRAMES = 4
# JPEG moves a smooth picture by a few levels: the mean error of a wrong picture (another frame,
# swapped channels, not resized) is 20 or more.
MEAN_ERROR = 3.0


def picture(seq: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A smooth RGB frame, (height, width, 3) uint8, that differs per channel and per ``seq``."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, np.full_like(x, (80 * seq) % 256)], -1).astype(np.uint8)


def mean_error(image: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(image.astype(int) - expected.astype(int)).mean())


def publish_pictures(stream: str, **publish) -> tuple[Consumer, list[FrameRecord], dict]:
    """FRAMES records of ``stream`` with their pixels in the object store, through a publisher of
    ``publish`` settings; the consumer, the frames it received and the publisher's stats."""
    publisher, endpoint = start_publisher(**publish)
    pixels = put_frames(np.stack([picture(seq) for seq in range(FRAMES)]))
    with Consumer(endpoint, streams=["warmup", stream], timeout=30) as consumer:
        warm_frames = warm_up(publisher, [consumer])
        publisher.publish_many.remote([make_record(stream, seq, pixels=pixels[seq]) for seq in range(FRAMES)])
        publisher.end_stream.remote(stream, FRAMES)
        publisher.end_stream.remote("warmup", warm_frames)
        frames = [frame for frame in consumer if frame.stream == stream]
    return consumer, frames, stop_publisher(publisher)


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("max_side, size", [(None, (WIDTH, HEIGHT)), (32, (32, 24)), (100, (WIDTH, HEIGHT))])
def test_the_jpeg_part_round_trips_at_the_frames_size_or_the_one_asked(max_side, size):
    consumer, frames, stats = publish_pictures("cam", images="jpeg", jpeg_quality=95, image_max_side=max_side)
    assert [frame.seq for frame in frames] == list(range(FRAMES)) and stats["streams"]["cam"]["published"] == FRAMES
    assert consumer.part_counts("cam") == [3] * FRAMES
    for frame in frames:
        header = json.loads(consumer.frame_bytes("cam")[frame.seq])
        assert header["image"] == {"format": "jpeg", "width": size[0], "height": size[1]}
        assert frame.image.shape == (size[1], size[0], 3) and frame.image.dtype == np.uint8
        expected = cv2.resize(picture(frame.seq), size, interpolation=cv2.INTER_AREA)
        assert mean_error(frame.image, expected) <= MEAN_ERROR  # this frame's picture, RGB
        assert frame.masks.shape == (2, HEIGHT, WIDTH)  # the masks keep the frame's own size
    assert mean_error(frames[1].image, frames[0].image) > 5 * MEAN_ERROR  # the test can tell frames apart


@pytest.mark.usefixtures("ray_cluster")
def test_images_none_sends_no_image_part():
    consumer, frames, _ = publish_pictures("cam")  # publish.images: none, the default
    assert len(frames) == FRAMES and consumer.part_counts("cam") == [2] * FRAMES
    assert all(frame.image is None and frame.encoded_image is None for frame in frames)
    assert all("image" not in json.loads(header) for header in consumer.frame_bytes("cam"))


def published_with_image(image: EncodedImage | None = None) -> FrameRecord:
    image = image or encode_jpeg(picture(3), 90)
    return dataclasses.replace(make_record("cam1", 3), published_at=1.7e9 + 1, encoded_image=image)


def test_a_frame_with_its_image_is_three_parts_and_decodes_back():
    record = published_with_image()
    parts = encode_message(record)
    assert len(parts) == 3 and parts[2] == record.encoded_image.data and parts[2][:2] == b"\xff\xd8"  # a JPEG
    decoded = decode_message(parts)
    assert decoded == record and decoded.encoded_image == record.encoded_image
    assert mean_error(decoded.image, picture(3)) <= MEAN_ERROR
    VALIDATORS[FRAME_SCHEMA].validate(json.loads(parts[1]))
    assert decode_message(encode_message(dataclasses.replace(record, encoded_image=None))).image is None


def with_header(parts: list[bytes], change) -> list[bytes]:
    header = json.loads(parts[1])
    change(header)
    return [parts[0], json.dumps(header).encode(), *parts[2:]]


@pytest.mark.parametrize("make_parts, problem", [
    (lambda parts: parts[:2], "an image field without an image part"),
    (lambda parts: with_header(parts, lambda h: h.pop("image")), "an image part the header does not describe"),
    (lambda parts: with_header(parts, lambda h: h["image"].update(format="png")), "expected format 'jpeg'"),
    (lambda parts: with_header(parts, lambda h: h["image"].pop("width")), "malformed image field"),
    (lambda parts: parts + [b"more"], "message of 4 parts"),
    (lambda parts: with_header(parts, lambda h: h["image"].update(width=h["width"] + 1)),
     "an image of 65x48 for a frame of 64x48"),
    (lambda parts: encode_message(EndOfStream("cam1", 4)) + [parts[2]], "an end of stream has no third part"),
])
def test_decoder_refuses_an_image_part_and_header_that_disagree(make_parts, problem):
    with pytest.raises(ProtocolError, match=problem) as error:
        decode_message(make_parts(encode_message(published_with_image())))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("image, problem", [
    (EncodedImage(WIDTH, HEIGHT, b"not a jpeg"), "its image part (10 bytes) is not a JPEG"),
    (dataclasses.replace(encode_jpeg(picture(0), 90), width=WIDTH // 2),
     "its image part is a 64x48 JPEG, its header says 32x48"),
])
def test_an_image_that_is_not_what_its_header_says_is_one_line_when_read(image, problem):
    frame = decode_message(encode_message(published_with_image(image)))  # the header and masks stay usable
    assert frame.masks.shape == (2, HEIGHT, WIDTH)
    with pytest.raises(ProtocolError, match=re.escape(f"frame of stream 'cam1' seq 3: {problem}") + "$"):
        frame.image


@pytest.mark.parametrize("change, path", [
    (lambda image: image.update(format="png"), "format"),
    (lambda image: image.pop("height"), "height"),
    (lambda image: image.update(width=0), "width"),
])
def test_the_frame_schema_refuses_a_malformed_image_field(change, path):
    header = published_with_image().to_wire()
    change(header["image"])
    with pytest.raises(jsonschema.ValidationError) as error:
        VALIDATORS[FRAME_SCHEMA].validate(header)
    assert path in error.value.message or path in list(error.value.absolute_path)


def test_scaled_size_keeps_the_aspect_and_never_enlarges():
    assert scaled_size(1280, 720, 320) == (320, 180)
    assert scaled_size(720, 1280, 320) == (180, 320)
    assert scaled_size(64, 48, None) == scaled_size(64, 48, 64) == scaled_size(64, 48, 1000) == (64, 48)
    assert scaled_size(10, 1000, 7) == (1, 7)


def test_an_overlay_video_draws_on_a_downscaled_picture_at_the_frames_size(tmp_path):
    """What ``maskstream consume --video`` does with frames whose messages carry a smaller picture."""
    record = make_record("cam1", 0, instances=0)
    half = cv2.resize(picture(1), (WIDTH // 2, HEIGHT // 2), interpolation=cv2.INTER_AREA)
    video = OverlayVideoSink(tmp_path / "cam1.avi", 25)
    video.write(record, half)
    with pytest.raises(SinkError, match=r"frame seq 0 pixels are \(96, 128, 3\), its record says 64x48 RGB"):
        video.write(record, picture(1, WIDTH * 2, HEIGHT * 2))
    video.close()
    capture = cv2.VideoCapture(str(tmp_path / "cam1.avi"))
    ok, bgr = capture.read()
    capture.release()
    assert ok and bgr.shape == (HEIGHT, WIDTH, 3)
    assert mean_error(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), picture(1)) <= 2 * MEAN_ERROR  # MJPEG's loss too

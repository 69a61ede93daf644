"""File sinks: JSON lines, COCO results and the overlay video agree with what was published."""
import dataclasses
import json

import cv2
import numpy as np
import pytest
import ray
from pycocotools.coco import COCO

from models.errors import SinkError
from pipeline.config import OutputSection
from pipeline.overlay import MASK_OPACITY, caption, class_colour, draw_instances, instance_colour, track_colour
from pipeline.protocol import InstanceRecord
from pipeline.sinks import OverlayVideoSink
from tests.wire_helpers import (
    HEIGHT,
    VALIDATORS,
    WIDTH,
    Consumer,
    encode_rle,
    make_record,
    rectangle_mask,
    start_publisher,
    stop_publisher,
    warm_up,
)
from workers.frames import put_frames

pytestmark = pytest.mark.usefixtures("ray_cluster")

CLASS_NAMES = ["background", "person", "bicycle", "car"]
GRAY = 128
FRAMES = 5


@pytest.fixture(scope="module")
def published(ray_cluster, tmp_path_factory):
    """cam1 published out of order with file sinks and the overlay video on: the headers the wire
    carried (as dicts) and the files."""
    out_dir = tmp_path_factory.mktemp("out")
    publisher, endpoint = start_publisher(OutputSection(dir=str(out_dir), overlay=True), CLASS_NAMES)
    ray.get(publisher.open_stream.remote("cam1", 10.0))
    pixels, = put_frames(np.full((1, HEIGHT, WIDTH, 3), GRAY, np.uint8))
    with Consumer(endpoint, streams=["warmup", "cam1"], timeout=30) as consumer:
        publisher.end_stream.remote("warmup", warm_up(publisher, [consumer]))
        for seq in [1, 0, 3, 2, 4]:
            publisher.publish.remote(make_record("cam1", seq, instances=seq % 3, pixels=pixels))
        publisher.end_stream.remote("cam1", FRAMES)
        seqs = [frame.seq for frame in consumer if frame.stream == "cam1"]
        # EOS has arrived: the stream's files are complete before the publisher closes.
        files = {path.name: path.read_bytes() for path in out_dir.glob("cam1.*")}
    stop_publisher(publisher)
    assert seqs == list(range(FRAMES))
    return consumer.frame_bytes("cam1"), files, out_dir


def test_jsonl_lines_are_the_wire_headers(published):
    raw, files, _ = published
    assert files["cam1.jsonl"].splitlines() == raw  # byte for byte


@pytest.fixture(scope="module")
def headers(published):
    return [json.loads(raw) for raw in published[0]]


def test_coco_results_load_against_the_images_file_and_match_the_wire(published, headers):
    out_dir = published[2]
    ground_truth = COCO(str(out_dir / "cam1.coco_images.json"))
    results = ground_truth.loadRes(str(out_dir / "cam1.coco_results.json"))
    assert sorted(results.getImgIds()) == list(range(FRAMES))
    for header in headers:
        image = ground_truth.loadImgs(header["seq"])[0]
        assert (image["frame_index"], image["width"], image["height"]) == (
            header["frame_index"], header["width"], header["height"])
        found = results.loadAnns(results.getAnnIds(imgIds=header["seq"]))
        assert [(ann["category_id"], ann["segmentation"], ann["score"]) for ann in found] == [
            (inst["class_id"], inst["mask"], inst["score"]) for inst in header["instances"]]
        for index, (ann, inst) in enumerate(zip(found, header["instances"])):
            x1, y1, x2, y2 = inst["box"]
            assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1]
            assert (results.annToMask(ann) == rectangle_mask(header["seq"], index)[0]).all()
    categories = {cat["id"]: cat["name"] for cat in ground_truth.loadCats(ground_truth.getCatIds())}
    assert categories == dict(enumerate(CLASS_NAMES))


def test_overlay_video_has_every_frame_drawn_on_its_pixels(published, headers):
    capture = cv2.VideoCapture(str(published[2] / "cam1.overlay.mp4"))
    assert capture.get(cv2.CAP_PROP_FPS) == 10.0  # the rate the stream was opened with
    images = []
    while (image := capture.read())[0]:
        images.append(image[1])
    capture.release()
    assert len(images) == FRAMES
    assert all(image.shape == (HEIGHT, WIDTH, 3) for image in images)
    for image, header in zip(images, headers):
        # The bottom-right corner holds no instance: the frame's own gray, not a black canvas.
        assert abs(float(np.median(image[-12:, -12:])) - GRAY) < 10
        for inst in header["instances"]:
            x1, y1, x2, y2 = (int(v) for v in inst["box"])
            drawn = image[y1:y2, x1:x2].astype(float)
            assert np.abs(drawn - GRAY).mean() > 20  # mask, box and caption coloured over the gray


def test_draw_instances_blends_class_colours_inside_masks_only():
    canvas = np.zeros((200, 200, 3), np.uint8)
    mask = np.zeros((200, 200), bool)
    mask[60:120, 60:120] = True
    instance = InstanceRecord(3, "car", 0.87, (60.0, 60.0, 120.0, 120.0), encode_rle(mask))
    draw_instances(canvas, [instance])
    expected = (np.array(class_colour(3)) * MASK_OPACITY).astype(np.uint8)
    assert (canvas[90, 90] == expected).all()
    assert (canvas[170, 170] == 0).all()
    assert (canvas[60, 90] == class_colour(3)).all()  # the box's edge


def test_masks_blend_exactly_as_whole_frame_masks_would_however_they_lie():
    """Each mask is blended within its own box, decoded from its runs: the pixels must be exactly
    those a whole-frame decode (pycocotools) and blend give, for masks that wrap from a column's
    bottom to the next one's top, touch the last column or row, fill the frame, are one pixel,
    several pieces, or empty. An off-by-one crop or a run placed in the wrong column changes pixels.
    (The box lies off the frame; its caption, top left, is left out of the comparison.)"""
    rng = np.random.default_rng(5)
    height, width = 60, 130
    shapes = [np.zeros((height, width), bool), np.ones((height, width), bool)]
    wrap = np.zeros((height, width), bool)
    wrap[50:, 100] = wrap[:6, 101] = True                # one run across a column boundary
    edge = np.zeros((height, width), bool)
    edge[25:, width - 3:] = True                         # to the last column and row
    dot = np.zeros((height, width), bool)
    dot[height - 1, 90] = True
    pieces = np.zeros((height, width), bool)
    pieces[30:35, 3:9] = pieces[20:33, 110:115] = True
    shapes += [wrap, edge, dot, pieces] + [rng.random((height, width)) < 0.3 for _ in range(3)]
    background = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    compared = np.ones((height, width), bool)
    for i, mask in enumerate(shapes):
        inst = InstanceRecord(1 + i % 3, "car", 0.9, (-50.0, -50.0, -40.0, -40.0), encode_rle(mask), i)
        (text_width, text_height), baseline = cv2.getTextSize(caption(inst), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        compared[:text_height + baseline + 1, :text_width + 1] = False
        drawn = draw_instances(background.copy(), [inst])
        expected = background.copy()
        expected[mask] = (background[mask] * (1 - MASK_OPACITY)
                          + np.array(instance_colour(inst)) * MASK_OPACITY).astype(np.uint8)
        assert compared[wrap | edge | dot].all() and compared.mean() > 0.7
        np.testing.assert_array_equal(drawn[compared], expected[compared], err_msg=f"mask {i}")


def test_with_tracking_each_track_has_its_own_colour_and_its_id_in_the_caption():
    mask = np.zeros((200, 200), bool)
    mask[60:120, 60:120] = True
    for track_id in (7, 8):
        canvas = np.zeros((200, 200, 3), np.uint8)
        instance = InstanceRecord(3, "car", 0.87, (60.0, 60.0, 120.0, 120.0), encode_rle(mask), track_id)
        draw_instances(canvas, [instance])
        assert (canvas[90, 90] == (np.array(track_colour(track_id)) * MASK_OPACITY).astype(np.uint8)).all()
        assert caption(instance) == f"#{track_id} car 0.87"
    assert track_colour(7) != track_colour(8)
    untracked = InstanceRecord(3, "car", 0.87, (60.0, 60.0, 120.0, 120.0), encode_rle(mask), 0)
    assert caption(untracked) == "car 0.87"          # in no track (yet): its class's colour, no id
    dwelling = dataclasses.replace(untracked, track_id=7, zones=("kerb", "bay"), dwell_s={"kerb": 95.4, "bay": 3.6})
    assert caption(dwelling) == "#7 car 0.87 kerb 95s bay 4s"   # how long it has stood in each region
    assert instance_colour(untracked) == class_colour(3)


def test_overlay_video_refuses_an_unknown_extension_and_a_frame_of_another_size(tmp_path):
    with pytest.raises(SinkError, match=r"overlay video .*out\.mkv: use a \.mp4 or \.avi file name"):
        OverlayVideoSink(tmp_path / "out.mkv", fps=10)
    sink = OverlayVideoSink(tmp_path / "out.avi", fps=10)
    sink.write(make_record("cam1", 0, instances=0))
    with pytest.raises(SinkError, match="frame seq 1 is 32x48, the video is 64x48"):
        sink.write(make_record("cam1", 1, instances=0, width=32))
    sink.close()


def test_coco_images_file_names_every_field_a_user_matches_on(published):
    _, files, _ = published
    images = json.loads(files["cam1.coco_images.json"])["images"]
    assert [(image["id"], image["stream"], image["seq"], image["frame_index"], image["pts"])
            for image in images] == [(seq, "cam1", seq, seq, seq / 25.0) for seq in range(FRAMES)]


def test_sinks_reopened_after_a_crash_are_cut_back_to_whole_lines_and_rebuilt(tmp_path):
    """A publisher killed mid-write leaves lines up to some seq and half a line; its successor
    resumes at an earlier seq (what the consumer may not have got): the files come back as
    exactly seqs 0.. before it, then go on, and the COCO results match the lines."""
    from pipeline.protocol import encode_header
    from pipeline.sinks import StreamSinks

    records = [dataclasses.replace(make_record("cam1", seq), published_at=1.7e9 + seq) for seq in range(8)]
    jsonl = tmp_path / "cam1.jsonl"
    jsonl.write_bytes(b"".join(encode_header(r) + b"\n" for r in records[:6]) + encode_header(records[6])[:17])
    sinks = StreamSinks(tmp_path, "cam1", CLASS_NAMES, resume_at=4)
    for record in records[4:]:
        sinks.write(record)
    sinks.close()
    assert jsonl.read_bytes().splitlines() == [encode_header(r) for r in records]
    coco = COCO(str(tmp_path / "cam1.coco_images.json"))
    results = coco.loadRes(str(tmp_path / "cam1.coco_results.json"))
    assert sorted(coco.getImgIds()) == list(range(8))
    assert len(results.anns) == sum(len(r.instances) for r in records)


def test_the_eos_file_is_the_wire_eos_and_is_there_when_the_eos_arrives(published):
    """The fixture read the files the moment the consumer had the stream's EOS."""
    _, files, _ = published
    header = json.loads(files["cam1.eos.json"])
    VALIDATORS["maskstream.eos/1"].validate(header)
    assert header == {"schema": "maskstream.eos/1", "stream": "cam1", "frames": FRAMES, "reason": "end"}


def test_done_streams_are_those_whose_eos_file_says_they_ended_and_a_reopened_stream_is_not(tmp_path):
    from pipeline.protocol import EndOfStream
    from pipeline.sinks import StreamSinks, done_streams, write_eos

    write_eos(tmp_path, EndOfStream("a", 12))
    write_eos(tmp_path, EndOfStream("b", 3, "stopped"))
    write_eos(tmp_path, EndOfStream("c", 0, "error", "c.mp4: cannot open (not a video, or damaged)"))
    (tmp_path / "d.eos.json").write_text('{"schema": "maskstream.eos/1", "stream": "d", "fra')   # cut short
    (tmp_path / "e.eos.json").write_bytes((tmp_path / "a.eos.json").read_bytes())              # another's
    assert done_streams(tmp_path, ["a", "b", "c", "d", "e", "f"]) == ["a"]
    assert not list(tmp_path.glob("*.part"))
    sinks = StreamSinks(tmp_path, "a", CLASS_NAMES)   # a written again: not done until its new end
    assert done_streams(tmp_path, ["a"]) == []
    sinks.close(EndOfStream("a", 0, "stopped"))
    assert done_streams(tmp_path, ["a"]) == []
    assert json.loads((tmp_path / "a.eos.json").read_text())["reason"] == "stopped"


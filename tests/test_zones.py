"""Zones (pipeline/zones.py): instances counted in regions by where they stand, tracked objects
counted crossing lines by direction, on the wire as the schema says, carried over a publisher's
restart, and mistakes in the configuration in one line."""
import dataclasses
import json

import numpy as np
import pytest

from models.errors import ConfigError, PipelineError
from pipeline.config import load_pipeline_config
from pipeline.protocol import FRAME_SCHEMA, FrameRecord, InstanceRecord, ProtocolError, decode_message, encode_message
from pipeline.zones import ZoneConfig, ZoneStage, anchors, crossings, inside, scale
from tests.wire_helpers import VALIDATORS, assert_refused, encode_rle

WIDTH, HEIGHT = 160, 120
DOOR = ZoneConfig("door", polygon=[[0, 60], [80, 60], [80, 120], [0, 120]])      # the lower left quarter
GATE = ZoneConfig("gate", line=[[100, 0], [100, 120]])                          # x = 100, pointing down


def instance(box, label="person", track_id=None) -> InstanceRecord:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    x1, y1, x2, y2 = (int(v) for v in box)
    mask[max(y1, 0):y2, max(x1, 0):x2] = True
    return InstanceRecord(1 if label == "person" else 3, label, 0.9, tuple(float(v) for v in box), encode_rle(mask),
                          track_id)


def record(seq, instances, stream="cam1", tracks_ended=()) -> FrameRecord:
    return FrameRecord(stream, seq, seq, seq / 25.0, 1.7e9 + seq / 25.0, None, WIDTH, HEIGHT, 0, {}, tuple(instances),
                       tracks_ended=tuple(tracks_ended))


def walker(x, track_id=1, label="person") -> InstanceRecord:
    """A 10x20 box standing at (x, 50): its bottom centre is (x, 50)."""
    return instance((x - 5, 30, x + 5, 50), label, track_id)


def test_where_an_instance_stands_is_its_boxs_bottom_centre_inside_a_polygon_or_on_its_edge():
    np.testing.assert_array_equal(anchors([[10, 20, 30, 60], [0, 0, 5, 1]]), [[20, 60], [2.5, 1]])
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]])
    points = np.array([[5, 5], [10, 5], [0, 0], [10.01, 5], [-1, 5], [5, 11]])
    np.testing.assert_array_equal(inside(square, points), [True, True, True, False, False, False])
    triangle = np.array([[0, 0], [10, 0], [0, 10]])
    np.testing.assert_array_equal(inside(triangle, np.array([[2, 2], [6, 6]])), [True, False])


def test_inside_says_what_opencvs_point_polygon_test_says_on_random_polygons_and_points():
    import cv2
    rng = np.random.default_rng(7)
    for _ in range(200):
        vertices = rng.integers(3, 9)
        angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))   # star-shaped: concave ones too
        radii = rng.uniform(5, 40, vertices)
        polygon = np.round(np.stack([50 + radii * np.cos(angles), 50 + radii * np.sin(angles)], 1))
        points = np.concatenate([rng.integers(0, 100, (60, 2)).astype(float), polygon,       # the corners,
                                 (polygon + np.roll(polygon, -1, 0)) / 2])                   # mid-edges
        want = [cv2.pointPolygonTest(polygon.astype(np.float32).reshape(-1, 1, 2), (float(x), float(y)), False) >= 0
                for x, y in points]
        np.testing.assert_array_equal(inside(polygon, points), want)


def test_a_movement_crosses_a_line_segment_by_direction_and_not_past_its_ends():
    line = np.array([[100, 0], [100, 120]])           # pointing down: its right-hand side is x < 100
    start = np.array([[90, 50], [110, 50], [90, 50], [90, 130], [90, 50], [100, 50], [90, 110]])
    end = np.array([[110, 50], [90, 50], [95, 60], [110, 130], [100, 50], [110, 50], [110, 130]])
    # across left to right: out; back: in; short of it; below its end; onto it; from it; through its end point
    np.testing.assert_array_equal(crossings(line, start, end), [-1, 1, 0, 0, 0, 0, -1])


def test_regions_count_the_instances_standing_in_them_and_name_them_on_each_instance():
    stage = ZoneStage([DOOR, ZoneConfig("all", polygon=[[0, 0], [160, 0], [160, 120], [0, 120]])], "cam1")
    got = stage.apply(record(0, [instance((10, 70, 30, 100)),                 # stands at (20, 100): door
                                 instance((60, 40, 100, 70), "car"),          # (80, 70): on door's edge
                                 instance((100, 10, 120, 50)),                # (110, 50): not in the door
                                 instance((10, 70, 30, 100), "car")]))
    assert [inst.zones for inst in got.instances] == [("door", "all"), ("door", "all"), ("all",), ("door", "all")]
    assert got.zone_counts == {"door": {"person": 1, "car": 2}, "all": {"person": 2, "car": 2}}
    assert (got.crossings, got.line_counts) == (None, None)                  # no lines: no line fields
    empty = stage.apply(record(1, []))
    assert empty.zone_counts == {"door": {}, "all": {}} and empty.instances == ()


def test_a_tracked_object_dwells_in_a_region_from_when_it_entered_across_misses_until_it_leaves():
    stage = ZoneStage([DOOR], "cam1")
    inside_, outside = (10, 70, 30, 100), (100, 10, 120, 50)        # standing at (20, 100): in; (110, 50): out
    frames = [[instance(inside_, track_id=0)],                          # t = 0.00: not yet a track: {}
              [instance(inside_, track_id=4)],                          # 0.04: enters
              [instance(inside_, track_id=4), instance(inside_, "car", 5)],   # 0.08: a car enters too
              [instance(inside_, "car", 5)],                            # 0.12: the person missed: still in
              [instance(inside_, track_id=4), instance(outside, "car", 5)],   # 0.16: the car left
              [instance(inside_, track_id=4), instance(inside_, "car", 5)],   # 0.20: the car back: from 0
              [instance(inside_, "car", 5)]]                            # 0.24: the person's track ended
    got = [stage.apply(record(seq, instances, tracks_ended=[4] if seq == 6 else []))
           for seq, instances in enumerate(frames)]
    dwell = [[inst.dwell_s for inst in frame.instances] for frame in got]
    assert dwell[0] == [{}] and dwell[1] == [{"door": 0.0}]
    assert dwell[2] == [{"door": pytest.approx(0.04)}, {"door": 0.0}]
    assert dwell[3] == [{"door": pytest.approx(0.04)}]
    assert dwell[4] == [{"door": pytest.approx(0.12)}, {}]
    assert dwell[5] == [{"door": pytest.approx(0.16)}, {"door": 0.0}]
    assert stage.snapshot()["door"].entered == {5: pytest.approx(0.20)}            # track 4 ended: forgotten
    assert ZoneStage([DOOR], "cam1").apply(record(0, [instance(inside_)])).instances[0].dwell_s is None  # untracked
    header = dataclasses.replace(got[5], published_at=1.7e9).to_wire()
    VALIDATORS[FRAME_SCHEMA].validate(header)
    assert header["instances"][0]["dwell_s"] == {"door": pytest.approx(0.16)}
    assert decode_message(encode_message(dataclasses.replace(got[5], published_at=1.7e9))).instances == got[5].instances


def test_tracked_objects_crossing_a_line_are_counted_once_each_way_by_label():
    stage = ZoneStage([GATE], "cam1")
    path = [80, 95, 105, 120, 104, 96, 100, 100, 106]     # across (out), back (in), onto the line, off it (out)
    frames = [stage.apply(record(seq, [walker(x, 7), walker(200 - x, 8, "car")])) for seq, x in enumerate(path)]
    events = [(seq, c["track_id"], c["label"], c["direction"]) for seq, f in enumerate(frames) for c in f.crossings]
    assert events == [(2, 7, "person", "out"), (2, 8, "car", "in"), (5, 7, "person", "in"),
                      (5, 8, "car", "out"), (8, 7, "person", "out"), (8, 8, "car", "in")]
    assert frames[-1].line_counts == {"gate": {"in": {"car": 2, "person": 1}, "out": {"person": 2, "car": 1}}}
    assert frames[1].line_counts == {"gate": {"in": {}, "out": {}}} and frames[1].zone_counts is None
    assert frames[0].instances[0].zones is None                              # no regions: no instance field


def test_only_confirmed_tracks_cross_and_an_ended_track_starts_afresh():
    stage = ZoneStage([GATE], "cam1")
    assert stage.apply(record(0, [walker(90, 0)])).crossings == ()         # track 0: not yet an object
    assert stage.apply(record(1, [walker(110, 0)])).crossings == ()
    stage.apply(record(2, [walker(90, 3)]))
    stage.apply(record(3, [], tracks_ended=[3]))
    # The id is new to the stage after its end: where it was before does not count.
    assert stage.apply(record(4, [walker(110, 3)])).crossings == ()
    assert stage.apply(record(5, [walker(90, 3)])).crossings == ({"line": "gate", "track_id": 3,
                                                                  "label": "person", "direction": "in"},)


def test_a_zone_applies_to_the_streams_it_names():
    zones = [dataclasses.replace(DOOR, streams=["cam2"]), GATE]
    assert (ZoneStage(zones, "cam1").region_names, ZoneStage(zones, "cam1").line_names) == ([], ["gate"])
    assert ZoneStage(zones, "cam2").region_names == ["door"]
    assert [n for n, _ in ZoneStage(zones, "cam2").geometry(WIDTH, HEIGHT).regions] == ["door"]
    assert not ZoneStage([dataclasses.replace(DOOR, streams=["cam2"])], "cam1")


# Zones given for a 1280x720 frame: a kerb (the lower left), a gate (x = 640, pointing down) and a
# line across (y = 300, pointing right); and a region in the frame's own pixels.
AT_720P = dict(frame_size=[1280.0, 720.0])
KERB = ZoneConfig("kerb", polygon=[[0, 500], [720, 500], [720, 720], [0, 720]], **AT_720P)
MIDDLE = ZoneConfig("middle", line=[[640, 0], [640, 720]], **AT_720P)
ACROSS = ZoneConfig("across", line=[[0, 300], [1280, 300]], **AT_720P)


def test_scaling_multiplies_x_by_the_widths_ratio_and_y_by_the_heights():
    points = [[1280, 720], [640, 0], [0, 360]]
    np.testing.assert_allclose(scale(points, (1280, 720), (640, 480)), [[640, 480], [320, 0], [0, 240]])
    np.testing.assert_allclose(scale(points, (1280, 720), (1920, 1080)), [[1920, 1080], [960, 0], [0, 540]])
    assert scale([], (1280, 720), (640, 360)).shape == (0, 2)


def test_a_zone_given_at_a_frame_size_is_placed_in_each_frames_size_one_without_stays_in_its_pixels():
    pixels = ZoneConfig("corner", polygon=[[0, 0], [400, 0], [400, 300]])
    stage = ZoneStage([KERB, MIDDLE, pixels], "cam1")
    small = stage.geometry(640, 480)                                    # x halved, y two thirds
    assert ([name for name, _ in small.regions], [name for name, _ in small.lines]) == (["kerb", "corner"],
                                                                                       ["middle"])
    np.testing.assert_allclose(small.regions[0][1], [[0, 1000 / 3], [360, 1000 / 3], [360, 480], [0, 480]])
    np.testing.assert_allclose(small.lines[0][1], [[320, 0], [320, 480]])
    np.testing.assert_array_equal(small.regions[1][1], pixels.polygon)              # as given, at any size
    np.testing.assert_array_equal(stage.geometry(1280, 720).regions[0][1], KERB.polygon)
    np.testing.assert_array_equal(stage.geometry(1280, 720).regions[1][1], pixels.polygon)
    assert stage.geometry(640, 480) is small                            # worked out once per size


def street(width, height, frames=10) -> list[FrameRecord]:
    """The same street at any frame size, as seen at 1280x720 and scaled: a person (track 1) walking
    right along y = 600 out of the kerb (x = 720) and across the middle (x = 640), a car (2) driving
    down x = 1000 across the line at y = 300, a person (3) standing in the kerb at (300, 650)."""
    sx, sy = width / 1280, height / 720
    def standing(x, y, label, track_id):
        box = (x - 20, y - 80, x + 20, y)
        return InstanceRecord(1 if label == "person" else 3, label, 0.9,
                              (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy),
                              {"size": [height, width], "counts": ""}, track_id)
    return [FrameRecord("cam1", seq, seq, seq / 25.0, 1.7e9, None, width, height, 0, {},
                        (standing(500 + 33 * seq, 600, "person", 1), standing(1000, 200 + 30 * seq, "car", 2),
                         standing(300, 650, "person", 3)), tracks_ended=())
            for seq in range(frames)]


def zone_outputs(zones: list[ZoneConfig], frames: list[FrameRecord]) -> list[tuple]:
    """What one stream's zones stage adds to each of its frames, in order."""
    stage = ZoneStage(zones, "cam1")
    return [([(inst.zones, inst.dwell_s) for inst in f.instances], f.zone_counts, f.crossings, f.line_counts)
            for f in map(stage.apply, frames)]


@pytest.mark.parametrize("width, height", [(640, 360), (640, 480), (1920, 1080)])
def test_zones_given_for_720p_count_the_same_street_alike_at_any_frame_size(width, height):
    zones = [KERB, MIDDLE, ACROSS]
    seen = zone_outputs(zones, street(1280, 720))
    # At 1280x720 itself: the walker leaves the kerb at seq 7, crosses the middle at 5; the car crosses at 4.
    assert [counts["kerb"] for _, counts, _, _ in seen] == [{"person": 2}] * 7 + [{"person": 1}] * 3
    assert [(seq, c["line"], c["track_id"], c["direction"]) for seq, (_, _, crossed, _) in enumerate(seen)
            for c in crossed] == [(4, "across", 2, "in"), (5, "middle", 1, "out")]
    assert seen[-1][0][2] == (("kerb",), {"kerb": pytest.approx(0.36)})
    assert seen[-1][3] == {"middle": {"in": {}, "out": {"person": 1}}, "across": {"in": {"car": 1}, "out": {}}}
    # The same street at another size: the same zones, counts, dwell times and crossings.
    assert zone_outputs(zones, street(width, height)) == seen


def test_a_stage_taken_up_from_a_snapshot_counts_on_as_the_original():
    path = [80, 95, 105, 120, 104, 96, 106, 90]
    frames = [record(seq, [walker(x, 7)]) for seq, x in enumerate(path)]
    whole = ZoneStage([GATE, DOOR], "cam1")
    first = [whole.apply(f) for f in frames[:4]]
    saved = whole.snapshot()
    rest = [whole.apply(f) for f in frames[4:]]
    taken_up = ZoneStage([GATE, DOOR], "cam1", saved)
    assert [taken_up.apply(f) for f in frames[4:]] == rest
    assert first[2].line_counts == {"gate": {"in": {}, "out": {"person": 1}}}   # the snapshot is a copy
    assert rest[-1].line_counts == {"gate": {"in": {"person": 2}, "out": {"person": 2}}}


def test_zone_fields_round_trip_validate_and_malformed_ones_are_refused():
    stage = ZoneStage([DOOR, GATE], "cam1")
    stage.apply(record(0, [walker(90, 5), instance((10, 70, 30, 100), "car", 6)]))
    sent = dataclasses.replace(stage.apply(record(1, [walker(110, 5), instance((10, 70, 30, 100), "car", 6)])),
                               published_at=1.7e9 + 1)
    header = sent.to_wire()
    VALIDATORS[FRAME_SCHEMA].validate(header)
    assert header["zone_counts"] == {"door": {"car": 1}} and header["instances"][1]["zones"] == ["door"]
    assert header["crossings"] == [{"line": "gate", "track_id": 5, "label": "person", "direction": "out"}]
    assert header["line_counts"] == {"gate": {"in": {}, "out": {"person": 1}}}
    assert list(header)[-4:] == ["tracks_ended", "zone_counts", "crossings", "line_counts"]
    assert decode_message(encode_message(sent)) == sent
    assert_refused(header, [
        (lambda h: h["instances"][0].update(zones="door"), "zones is not a list of names"),
        (lambda h: h["instances"][0].update(dwell_s={"door": -1}), "dwell_s is not an object of seconds"),
        (lambda h: h["instances"][0].update(dwell_s=[1.0]), "dwell_s is not an object of seconds"),
        (lambda h: h.update(zone_counts={"door": {"car": -1}}), "zone_counts is not an object"),
        (lambda h: h["crossings"][0].update(direction="up"), "crossings is not a list"),
        (lambda h: h["crossings"][0].update(track_id=0), "crossings is not a list"),
        (lambda h: h.update(line_counts={"gate": {"in": {}}}), "line_counts is not an object"),
        (lambda h: h.update(line_counts={"gate": {"in": {}, "out": {"car": 1.5}}}), "line_counts is not an"),
    ])
    del header["line_counts"]
    with pytest.raises(ProtocolError, match="crossings and line_counts come together"):
        FrameRecord.from_wire(header)


def test_consume_prints_each_regions_count_and_each_lines_crossings_so_far():
    from pipeline.consume import describe
    stage = ZoneStage([DOOR, GATE], "cam1")
    stage.apply(record(0, [walker(90, 5)]))
    line = describe(stage.apply(record(1, [walker(110, 5), instance((10, 70, 30, 100), "car", 6)])))
    assert line.endswith("instances=2: #5 person 0.90, #6 car 0.90 door 0s | door: car 1 | gate: in none, out person 1")
    assert " | " not in describe(record(1, [walker(110, 5)]))


SIZE_MISTAKE = r"^config.zones\[0\].frame_size: must be \[width, height\], two positive numbers \(or null"


@pytest.mark.parametrize("zones, message", [
    ([{"name": "a", "polygon": [[0, 0], [1, 1]]}], r"zones\[0\].polygon: needs at least 3 \[x, y\] points"),
    ([{"name": "a"}], r"zones\[0\]: needs a polygon or a line"),
    ([{"name": "a", "line": [[0, 0], [1, 1]], "polygon": [[0, 0], [1, 0], [0, 1]]}], r"zones\[0\]: needs a polygon"),
    ([{"name": "a", "line": [[5, 5], [5, 5]]}], r"zones\[0\].line: needs 2 different points"),
    ([{"name": "a", "line": [[0, 0], [1, 1]]}, {"name": "a", "line": [[0, 1], [1, 1]]}],
     r"zones\[1\].name: 'a' is used twice"),
    ([{"name": "a/b", "line": [[0, 0], [1, 1]]}], r"zones\[0\].name: must be letters"),
    ([{"name": "a", "line": [[0, 0], [1, "x"]]}], r"zones\[0\].line\[1\]\[1\]: expected a number"),
    ([{"name": "a", "line": [[0, 0], [1, 1]], "frame_size": [1280]}], SIZE_MISTAKE),
    ([{"name": "a", "line": [[0, 0], [1, 1]], "frame_size": [1280, 720, 3]}], SIZE_MISTAKE),
    ([{"name": "a", "line": [[0, 0], [1, 1]], "frame_size": [1280, 0]}], SIZE_MISTAKE),
    ([{"name": "a", "line": [[0, 0], [1, 1]], "frame_size": [-1280, 720]}], SIZE_MISTAKE),
    ([{"name": "a", "line": [[0, 0], [1, 1]], "frame_size": [1280, "720p"]}],
     r"zones\[0\].frame_size\[1\]: expected a number"),
    ([{"name": "a", "line": [[0, 0], [1, 1]], "frame_size": "1280x720"}], r"zones\[0\].frame_size: expected a list"),
])
def test_zone_mistakes_are_one_line_naming_the_zone(zones, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_pipeline_config(None, [f"zones={json.dumps(zones)}"])
    assert "\n" not in str(error.value)


def test_a_counting_line_without_tracking_or_for_a_stream_not_in_the_run_is_one_line():
    line = json.dumps([{"name": "gate", "line": [[0, 0], [1, 1]], "streams": ["cam9"]}])
    with pytest.raises(ConfigError, match=r"zones\[0\].line: a counting line needs tracking"):
        load_pipeline_config(None, [f"zones={line}", "tracking.enabled=false"])
    from pipeline.runner import check_zone_streams, parse_sources
    config = load_pipeline_config(None, [f"zones={line}"])
    with pytest.raises(PipelineError, match=r"^zones\[0\] \(gate\): no stream 'cam9' in this run \(its streams: "
                                            r"synthetic\)$"):
        check_zone_streams(config, parse_sources(config.sources.uris))


def test_overlay_outlines_each_region_and_draws_each_line_as_an_arrow_with_its_counts():
    from pipeline.overlay import ZONE_COLOUR, draw_zones
    stage = ZoneStage([ZoneConfig("door", polygon=[[20, 60], [80, 60], [80, 110], [20, 110]]),
                       ZoneConfig("gate", line=[[130, 10], [130, 110]])], "cam1")
    canvas = draw_zones(np.zeros((HEIGHT, WIDTH, 3), np.uint8), stage.geometry(WIDTH, HEIGHT),
                        {"door": "person 1", "gate": "in none, out car 1"})
    amber = np.all(np.abs(canvas.astype(int) - ZONE_COLOUR) <= 40, axis=2)
    assert amber[85, 19:22].any() and amber[85, 79:82].any() and amber[110, 50]      # the region's edges
    assert not amber[85, 30:70].any()                                                # not its inside
    assert amber[60:100, 129:132].all(axis=0).any()                                  # the line
    # The arrow's head is at the second point: wider there than at the first.
    assert amber[96:111, 115:145].sum() > 2 * amber[20:35, 115:145].sum()
    # Each caption sits on a filled box just above the zone's first point.
    assert amber[45:58, 20:60].mean() > 0.5 and amber[0:10, 100:160].mean() > 0.5
    assert amber[0:10, 159].any()                      # kept inside the frame: moved left from x = 130


def test_the_overlay_video_shows_the_zones_of_its_stream(tmp_path):
    import cv2

    from pipeline.sinks import StreamSinks
    stage = ZoneStage([ZoneConfig("door", polygon=[[20, 60], [80, 60], [80, 110], [20, 110]])], "cam1")
    sinks = StreamSinks(tmp_path, "cam1", ["__background__", "person", "lane", "car"], overlay_fps=10, zones=stage)
    for seq in range(3):
        sinks.write(dataclasses.replace(stage.apply(record(seq, [walker(50 + seq, 4)])), published_at=1.7e9))
    sinks.close()
    capture = cv2.VideoCapture(str(tmp_path / "cam1.overlay.mp4"))
    ok, frame = capture.read()
    capture.release()
    edge, inside_ = frame[85, 18:23], frame[85, 30:45]       # BGR: amber is high green and red
    assert ok and edge[:, 1].max() > 150 and edge[:, 2].max() > 150 and inside_.max() < 60


def test_the_overlay_video_draws_a_zone_given_at_a_frame_size_where_it_falls_in_its_frames(tmp_path):
    import cv2

    from pipeline.sinks import StreamSinks
    # Given at 160x120, drawn on 320x64 frames: x doubled, y times 0.53 -> corners (40, 10.7), (200, 53.3).
    square = ZoneConfig("square", polygon=[[20, 20], [100, 20], [100, 100], [20, 100]], frame_size=[160, 120])
    stage = ZoneStage([square], "cam1")
    sinks = StreamSinks(tmp_path, "cam1", ["__background__", "person"], overlay_fps=10, zones=stage)
    for seq in range(3):
        frame = dataclasses.replace(record(seq, []), width=320, height=64, published_at=1.7e9)
        sinks.write(stage.apply(frame))
    sinks.close()
    capture = cv2.VideoCapture(str(tmp_path / "cam1.overlay.mp4"))
    ok, frame = capture.read()
    capture.release()
    assert ok and frame.shape == (64, 320, 3)
    amber = (frame[..., 1] > 120) & (frame[..., 2] > 120)           # BGR: amber is high green and red
    assert amber[25:45, 38:43].any(axis=1).all() and amber[25:45, 198:203].any(axis=1).all()  # its sides
    assert amber[52:56, 60:180].any(axis=0).all()                                        # its bottom
    assert not amber[25:45, 14:26].any() and not amber[25:45, 95:105].any()  # not the given x = 20, 100
    assert not amber[18:23, 60:180].any() and not amber[25:45, 50:190].any()  # nor y = 20; inside empty


def test_the_publishers_answers_carry_each_streams_last_region_counts_and_line_totals():
    """What the scheduler hands to the Prometheus metrics (RunStats.zones)."""
    from pipeline.config import PublishSection
    from pipeline.publisher import Publisher
    from pipeline.tracking import TrackingConfig
    publisher = Publisher(PublishSection(endpoint="tcp://127.0.0.1:*"), tracking=TrackingConfig(), zones=[DOOR, GATE])
    try:
        for seq, x in enumerate(range(92, 110, 2)):          # one person walking through the gate
            publisher.publish(dataclasses.replace(record(seq, [walker(x, 0)]), tracks_ended=None))
        progress = publisher.progress()
        for seq, x in enumerate([110] * 4 + list(range(108, 90, -2)), start=9):   # a pause, and back
            publisher.publish(dataclasses.replace(record(seq, [walker(x, 0)]), tracks_ended=None))
        back = publisher.progress()
    finally:
        publisher.close()
    assert progress["zones"] == {"cam1": {"zone_counts": {"door": {}},
                                          "line_counts": {"gate": {"in": {}, "out": {"person": 1}}}}}
    # The totals are those of the restart snapshot in the same answer, and copies: later frames leave them be.
    assert progress["trackers"]["cam1"][1][1]["gate"].counts == {"in": {}, "out": {"person": 1}}
    assert back["zones"]["cam1"]["line_counts"] == {"gate": {"in": {"person": 1}, "out": {"person": 1}}}

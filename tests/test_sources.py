"""Sources: URI parsing, real decoding of the shared clips, image folders with odd frames, bad inputs."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.sources import SourceError, SourceSpec, open_source, parse_source, parse_synthetic, source_kind, to_rgb
from tests.pipeline_helpers import DATA, HIGHWAY, PEDESTRIANS, free_port


def read_all(source, limit=10_000):
    frames = []
    while len(frames) < limit and (frame := source.read()) is not None:
        frames.append(frame)
    source.close()
    return frames


@pytest.mark.parametrize("spec, stream_id, kind", [
    (str(PEDESTRIANS), "pedestrians_720p", "file"),
    (str(DATA), "data", "folder"),
    ("0", "cam0", "camera"),
    ("rtsp://10.0.0.5:554/live/main", "10.0.0.5_554_live_main", "network"),
    ("https://example.org/cam.mjpg?token=x", "example.org_cam.mjpg", "network"),
    ("synthetic:", "synthetic", "synthetic"),
    ("synthetic:seed=3,frames=5", "synthetic", "synthetic"),
    ("front=rtsp://cam/1", "front", "network"),
    ("left=0", "left", "camera"),
])
def test_parse_source_gives_stream_id_and_kind(spec, stream_id, kind):
    parsed = parse_source(spec)
    assert (parsed.stream_id, parsed.kind) == (stream_id, kind)
    assert parsed.live == (kind in ("camera", "network"))


def test_id_prefix_is_not_taken_from_a_uri_with_equals_inside():
    assert parse_source("synthetic:seed=2").uri == "synthetic:seed=2"
    assert source_kind("http://host/x?a=b") == "network"


@pytest.mark.slow
def test_video_file_reads_every_decodable_frame_not_the_container_count():
    source = open_source(parse_source(str(PEDESTRIANS)))
    assert source.total == 682  # what the header claims: a hint only
    assert source.fps == 25.0   # its timestamps' rate, not the header's 50: the overlay video's default
    frames = read_all(source)
    assert len(frames) == 341
    assert all(f.rgb.shape == (720, 1280, 3) and f.rgb.dtype == np.uint8 for f in frames)
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert pts[1] - pts[0] == pytest.approx(0.04)  # the stream's own clock: 25 frames a second


def test_video_frames_are_rgb():
    frame = open_source(parse_source(str(HIGHWAY))).read()
    capture = cv2.VideoCapture(str(HIGHWAY))
    ok, bgr = capture.read()
    assert ok and np.array_equal(frame.rgb, bgr[:, :, ::-1])
    assert frame.pts == 0.0


def test_image_folder_sorted_converted_and_unreadable_skipped(tmp_path):
    gray = np.arange(37 * 53, dtype=np.uint8).reshape(37, 53)
    bgra = np.zeros((20, 30, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 10, 200, 128   # blue 10, red 200, alpha
    deep = np.full((16, 16), 0x8000, np.uint16)
    cv2.imwrite(str(tmp_path / "b_gray.png"), gray)
    cv2.imwrite(str(tmp_path / "a_bgra.png"), bgra)
    cv2.imwrite(str(tmp_path / "c_deep.png"), deep)
    (tmp_path / "b_broken.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored: not an image name")
    source = open_source(parse_source(str(tmp_path)), folder_fps=10.0)
    assert (source.total, source.fps) == (4, 10.0)
    frames = read_all(source)
    assert [f.rgb.shape for f in frames] == [(20, 30, 3), (37, 53, 3), (16, 16, 3)]
    assert frames[0].rgb[0, 0].tolist() == [200, 0, 10]
    assert np.array_equal(frames[1].rgb[..., 1], gray)
    assert frames[2].rgb.max() == 128
    # pts follow the position in the folder, also across the skipped file
    assert [f.pts for f in frames] == [0.0, 0.2, 0.3]


def test_to_rgb_rejects_float_images():
    with pytest.raises(SourceError, match="x.exr: unsupported pixel type float32"):
        to_rgb(np.zeros((4, 4, 3), np.float32), "x.exr")


@pytest.mark.parametrize("clip, keep_bytes, problem", [
    (PEDESTRIANS, 1_000_000, "decoding stopped at 4.18 s of the 13.64 s its header declares"),
    (HIGHWAY, 300_000, "decoding stopped at 0.12 s of the 1.52 s its header declares"),
])
def test_truncated_video_gives_its_frames_then_one_line(tmp_path, clip, keep_bytes, problem):
    cut = tmp_path / f"cut{clip.suffix}"
    cut.write_bytes(clip.read_bytes()[:keep_bytes])
    source = open_source(parse_source(str(cut)))
    frames = []
    with pytest.raises(SourceError) as error:
        while True:
            frames.append(source.read())
    assert len(frames) > 0 and all(f.rgb.shape == (720, 1280, 3) for f in frames)
    assert str(error.value) == f"{cut}: {problem} (truncated or damaged file)"


def test_complete_files_are_not_called_truncated():
    assert len(read_all(open_source(parse_source(str(HIGHWAY))))) == 38


@pytest.mark.parametrize("make, problem", [
    (lambda d: d / "missing.avi", "missing.avi: no such file"),
    (lambda d: _write(d / "notes.avi", b"hello, not a video"), "notes.avi: cannot open"),
    (lambda d: _write(d / "head.mp4", HIGHWAY.read_bytes()[:2_000]), "head.mp4: "),
    (lambda d: d, "no images in this folder"),
])
def test_bad_files_give_one_line_naming_the_input(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(SourceError) as error:
        open_source(parse_source(str(path)))
    assert problem in str(error.value) and "\n" not in str(error.value)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_unreachable_url_and_missing_camera():
    url = f"http://127.0.0.1:{free_port()}/stream.mjpg"
    with pytest.raises(SourceError, match="cannot open .unreachable, or not a video stream"):
        open_source(parse_source(url), open_timeout_s=2.0)
    with pytest.raises(SourceError, match="^99: cannot open .no such camera"):
        open_source(SourceSpec("cam99", "99", "camera"))


def test_synthetic_scenes_are_generated_and_repeatable():
    spec = parse_source("synthetic:seed=4,width=96,height=64,fps=10,frames=3")
    source = open_source(spec)
    assert source.fps == 10.0
    frames = read_all(source)
    again = read_all(open_source(spec))
    assert [f.rgb.shape for f in frames] == [(64, 96, 3)] * 3
    assert [f.pts for f in frames] == [0.0, 0.1, 0.2]
    assert all(np.array_equal(a.rgb, b.rgb) for a, b in zip(frames, again))
    assert not np.array_equal(frames[0].rgb, frames[2].rgb)  # the scene moves


@pytest.mark.parametrize("uri, problem", [
    ("synthetic:speed=3", "expected key=value with keys seed, width"),
    ("synthetic:width=abc", "width='abc' is not a number"),
    ("synthetic:width=8", "need width and height >= 32"),
])
def test_synthetic_parameters_are_checked(uri, problem):
    with pytest.raises(SourceError, match=problem):
        parse_synthetic(uri)


def test_a_pattern_is_a_stream_per_matching_path_named_after_it(tmp_path):
    from models.errors import PipelineError
    from pipeline.runner import parse_sources
    for name in ("b.mp4", "a.mp4", "c.avi", "[x].mp4"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "day1").mkdir()
    specs = parse_sources([f"{tmp_path}/*.mp4", f"{tmp_path}/day?", "cam=0"])
    assert [(s.stream_id, s.uri, s.kind) for s in specs] == [
        ("x", f"{tmp_path}/[x].mp4", "file"), ("a", f"{tmp_path}/a.mp4", "file"), ("b", f"{tmp_path}/b.mp4", "file"),
        ("day1", f"{tmp_path}/day1", "folder"), ("cam", "0", "camera")]
    # A path that exists as it is is that file, whatever its characters.
    assert [s.uri for s in parse_sources([f"{tmp_path}/[x].mp4"])] == [f"{tmp_path}/[x].mp4"]
    with pytest.raises(PipelineError, match=r"^.*/\*\.mkv: no file matches this pattern$"):
        parse_sources([f"{tmp_path}/*.mkv"])
    with pytest.raises(PipelineError, match=r"a pattern gives a stream per file, named after it; drop clips=$"):
        parse_sources([f"clips={tmp_path}/*.mp4"])
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "a.mp4").write_bytes(b"")
    with pytest.raises(PipelineError, match=r"/a.mp4 and .*/more/a.mp4 have the same stream id 'a': name them with"):
        parse_sources([f"{tmp_path}/*.mp4", f"{tmp_path}/more/*.mp4"])

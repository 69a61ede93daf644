"""Ingest actors: bounded read-ahead offline, newest-frame-wins live, reopening a lost camera."""
import time

import cv2
import numpy as np
import pytest
import ray

from pipeline.config import SourcesSection
from pipeline.ingest import IngestActor, Opened, Taken, with_pixels
from pipeline.protocol import FrameRecord
from pipeline.sources import parse_source
from tests.pipeline_helpers import PEDESTRIANS, MjpegCamera, free_port, poll
from workers.frames import fetch_frames

pytestmark = pytest.mark.usefixtures("ray_cluster")


def start(spec: str, live: bool, block: int = 1, **options):
    """An ingest actor, opened and (if that worked) reading; its open() answer."""
    actor = IngestActor.remote(parse_source(spec), SourcesSection(**options), live, block)
    answer = ray.get(actor.open.remote())
    if answer.error is None:
        ray.get(actor.start.remote())
    return actor, answer


def take(actor, *args) -> Taken:
    """take() as the scheduler calls it: the records with their pixels, handles into the second answer."""
    answer, pixels = actor.take.remote(*args)
    answer = ray.get(answer)
    answer.frames = with_pixels(answer, pixels)
    return answer


def take_all(actor, size: int = 4, deadline_s: float = 120.0) -> list[FrameRecord]:
    """Every frame until the stream is done (a failure, not a hang, if it never ends)."""
    frames = []
    ends = time.monotonic() + deadline_s
    while True:
        assert time.monotonic() < ends, f"the stream did not end within {deadline_s} s ({len(frames)} frames taken)"
        answer = take(actor, size, 1.0)
        frames += answer.frames
        if answer.done:
            assert answer.error is None
            return frames


def test_offline_reader_blocks_at_read_ahead_and_gives_every_frame(tmp_path):
    for i in range(7):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((24, 32, 3), 10 * i, np.uint8))
    actor, answer = start(str(tmp_path), live=False, read_ahead=3, folder_fps=5.0)
    assert answer == Opened(tmp_path.name, total=7, size=(24, 32), fps=5.0, error=None)
    poll(lambda: ray.get(actor.counts.remote())["read"] == 3, "the reader fills its buffer")
    first = take(actor, 1, 1.0).frames
    poll(lambda: ray.get(actor.counts.remote())["read"] == 4, "the reader refills one frame")
    assert ray.get(actor.counts.remote())["read"] == 4  # 3 waiting + 1 taken: it blocks again
    frames = first + take_all(actor)
    assert [f.frame_index for f in frames] == list(range(7))
    assert [f.pts for f in frames] == [i / 5.0 for i in range(7)]
    assert all(f.dropped_before == 0 and (f.width, f.height) == (32, 24) for f in frames)
    assert all(f.stream == tmp_path.name and f.seq is None and set(f.timing_ms) == {"decode"} for f in frames)
    pixels = fetch_frames([f.pixels for f in frames])
    assert [int(p[0, 0, 0]) for p in pixels] == [10 * i for i in range(7)]
    assert ray.get(actor.counts.remote()) == {"read": 7, "dropped": 0, "skipped": 0}
    ray.kill(actor)


def test_offline_max_frames_and_stamps_from_a_real_clip():
    actor, answer = start(str(PEDESTRIANS), live=False, max_frames=5)
    assert (answer.total, answer.fps) == (5, 25.0)
    before = time.time()
    frames = take_all(actor)
    assert [f.frame_index for f in frames] == [0, 1, 2, 3, 4]
    assert [round(f.pts, 3) for f in frames] == [0.04, 0.08, 0.12, 0.16, 0.2]
    assert all(f.stream == "pedestrians_720p" and f.captured_at <= time.time() for f in frames)
    assert frames[-1].captured_at >= before - 60
    assert fetch_frames([frames[0].pixels])[0].shape == (720, 1280, 3)
    ray.kill(actor)


@pytest.mark.parametrize("take_size", [4, 3])
@pytest.mark.slow
def test_frames_in_blocks_are_the_decoded_pixels_although_the_reader_reuses_its_block(take_size):
    """Offline, the reader decodes 4 frames straight into one array and the next 4 into a new
    one; a take of a whole block returns it as one object, a take across blocks a list of
    frames: every frame taken is exactly what OpenCV decodes, in RGB, and the last, partial
    block is not lost."""
    actor, answer = start(str(PEDESTRIANS), live=False, block=4, max_frames=10, read_ahead=4)
    assert answer.error is None, answer.error
    frames = take_all(actor, size=take_size)
    objects = [ray.get(ref) for ref in dict.fromkeys(f.pixels.block for f in frames)]
    if take_size == 4:  # every take is one block's slice: one array per take
        assert [(type(o), len(o)) for o in objects] == [(np.ndarray, 4), (np.ndarray, 4), (np.ndarray, 2)]
    assert sum(len(o) for o in objects) == 10
    assert [f.pixels.index for f in frames] == [i for o in objects for i in range(len(o))]
    taken = fetch_frames([f.pixels for f in frames])
    capture = cv2.VideoCapture(str(PEDESTRIANS))
    for index, pixels in enumerate(taken):
        ok, bgr = capture.read()
        assert ok
        np.testing.assert_array_equal(pixels, bgr[:, :, ::-1], err_msg=f"frame {index}")
    capture.release()
    assert len(taken) == 10 and [f.frame_index for f in frames] == list(range(10))
    ray.kill(actor)


def test_a_block_ends_where_the_frame_size_changes(tmp_path):
    sizes = [(24, 32), (24, 32), (40, 30), (40, 30), (40, 30), (40, 30), (24, 32)]
    for i, (height, width) in enumerate(sizes):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((height, width, 3), 10 * i, np.uint8))
    actor, answer = start(str(tmp_path), live=False, block=3, read_ahead=8)
    assert answer.error is None, answer.error
    frames = take_all(actor)
    pixels = fetch_frames([f.pixels for f in frames])
    assert [p.shape[:2] for p in pixels] == sizes
    assert [int(p[0, 0, 0]) for p in pixels] == [10 * i for i in range(7)]
    blocks = [ray.get(ref) for ref in dict.fromkeys(f.pixels.block for f in frames)]
    assert all(isinstance(b, list) or b.shape[1:3] in ((24, 32), (40, 30)) for b in blocks)
    ray.kill(actor)


def test_offline_take_gathers_a_whole_batch_within_fill_time():
    actor, answer = start(str(PEDESTRIANS), live=False, max_frames=16, read_ahead=8)
    assert answer.error is None, answer.error
    sizes = []
    while True:
        answer = take(actor, 4, 5.0, 5.0)
        sizes.append(len(answer.frames))
        if answer.done:
            break
    assert sum(sizes) == 16 and all(size == 4 for size in sizes[:4]), sizes
    ray.kill(actor)


@pytest.mark.slow
def test_live_keeps_the_newest_frame_and_counts_the_dropped():
    # Generated at 200 frames a second while the test takes one now and then: most are dropped.
    actor, answer = start("synthetic:width=64,height=48,fps=200,frames=120", live=True, live_queue=1)
    assert answer.total is None  # live streams have no progress total
    frames = []
    while True:
        answer = take(actor, 1, 1.0)
        frames += answer.frames
        if answer.done:
            break
        time.sleep(0.05)
    counts = ray.get(actor.counts.remote())
    indices = [f.frame_index for f in frames]
    assert indices == sorted(set(indices))  # never an older frame after a newer one
    assert indices[-1] == 119  # the newest frame is never the one dropped
    assert counts["read"] == 120
    assert sum(f.dropped_before for f in frames) == counts["dropped"] == 120 - len(frames) > 0
    # dropped_before counts exactly the frames skipped since the previous frame taken
    assert all(b.frame_index - a.frame_index - 1 == b.dropped_before for a, b in zip(frames, frames[1:]))
    ray.kill(actor)


def test_live_hands_out_the_pixels_of_the_frames_taken_only():
    """A live frame goes into the object store when it is taken (take's second answer), not when
    it is read: the frames dropped never cost a copy. (The reader runs in this process so that
    its answers can be seen before Ray stores them.)"""
    import pipeline.ingest as ingest
    reader = ingest.Ingest(parse_source("synthetic:width=64,height=48,fps=200,frames=120"),
                           SourcesSection(live_queue=1), live=True)
    assert reader.open().error is None
    reader.start()
    frames, handed_out = [], []
    while True:
        answer, pixels = reader.take(1, 1.0)
        frames += answer.frames
        handed_out += [] if pixels is None else list(pixels)
        if answer.done:
            break
        time.sleep(0.05)
    counts = reader.counts()
    assert counts["read"] == 120 and counts["dropped"] > 0
    assert len(handed_out) == len(frames) == 120 - counts["dropped"]
    assert [image.shape for image in handed_out] == [(48, 64, 3)] * len(frames)


def test_bad_source_is_reported_by_open():
    actor, answer = start("/no/such/clip.mp4", live=False)
    assert answer == Opened("clip", None, None, None, "/no/such/clip.mp4: no such file")
    ray.kill(actor)


@pytest.mark.slow
def test_live_network_camera_is_reopened_after_its_server_restarts():
    camera = MjpegCamera(free_port(), fps=25).start()
    actor, answer = start(f"door={camera.url}", live=True, reconnect_initial_s=0.2, reconnect_max_s=0.5,
                          open_timeout_s=2.0)
    assert answer.error is None
    events = []

    def take_frames():
        answer = take(actor, 1, 0.5)
        events.extend(answer.events)
        assert not answer.done
        return answer.frames

    before = poll(take_frames, "frames from the camera")
    camera.stop()
    poll(lambda: take_frames() == [] and any("stream lost" in e for e in events), "the loss noticed")
    restarted_at = time.time()
    camera.start()
    after = poll(take_frames, "frames after the restart")
    assert after[0].captured_at > restarted_at
    assert after[0].frame_index > before[-1].frame_index
    assert after[0].stream == "door" and (after[0].width, after[0].height) == (160, 120)
    assert events[0] == f"door: stream lost, reopening {camera.url}"
    assert events[-1] == "door: stream reopened"
    assert ray.get(actor.stop.remote())["read"] > 0
    camera.stop()
    ray.kill(actor)

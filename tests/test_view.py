"""The live view (pipeline/view.py) in a real browser: Debian's Chromium, headless, driven by Playwright.

The page is read as a person sees it: the DOM for names and figures, screenshots for pixels.
Publishers are real (the pipeline itself, or ``Publisher`` fed records whose masks are known),
and so are the view's ZeroMQ subscriber, its web server and the command line.
"""
import asyncio
import dataclasses
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from models.data.scenes import StreetScene
from models.errors import ViewError
from pipeline import keys
from pipeline import run as run_command
from pipeline.config import PublishSection, load_pipeline_config
from pipeline.overlay import MASK_OPACITY, ZONE_COLOUR, caption, class_colour, render_frame, track_colour
from pipeline.protocol import EndOfStream, FrameRecord, InstanceRecord
from pipeline.publisher import Publisher
from pipeline.view import ViewServer, check_endpoint, frame_jpeg
from pipeline.zones import ZoneConfig
from tests.bench_helpers import load_bench
from tests.pipeline_helpers import free_port
from tests.test_pipeline_e2e import RECEIVE_LIMIT_S, TINY, BackgroundRun, config_for
from tests.wire_helpers import ANY_PORT, WARM_UP_LIMIT, Consumer, encode_rle
from workers.frames import put_frames

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium's own connections are refused by the closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
GUARD_MS = 180_000   # waits on the page give up after this: a guard against a hang, not a timing
LINE_LIMIT_S = 60    # the same for a line from the view's process
JPEG_TOLERANCE = 8   # per channel: JPEG and the browser's scaling move flat colours by a few levels
SCREENSHOT = REPO / "bench" / "results" / "view.png"

bench_view = load_bench("view")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium): the page is not tested in a browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh page (a new browser context: no cache, no cookies) of 1280x720."""
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    context.set_default_timeout(GUARD_MS)
    yield context.new_page()
    context.close()


def tile(stream: str) -> str:
    return f'.tile[data-stream="{stream}"]'


def shown_frame(page, stream: str, width: int, height: int) -> np.ndarray:
    """The stream's frame as the browser shows it, scaled back to the frame's size: (H, W, 3) BGR."""
    png = page.locator(f"{tile(stream)} img.frame").screenshot()
    shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    return cv2.resize(shot, (width, height), interpolation=cv2.INTER_AREA)


def wait_shown(page, stream: str, seq: int, state: str) -> None:
    """Until the stream's tile shows frame ``seq`` and is in ``state``."""
    page.wait_for_function(
        "([sel, seq, state]) => { const t = document.querySelector(sel);"
        " return t && t.dataset.seq === String(seq) && t.dataset.state === state; }",
        arg=[tile(stream), seq, state])


def half_colour(bgr: tuple[int, int, int]) -> np.ndarray:
    """A mask's colour drawn on the black canvas."""
    return (np.array(bgr) * MASK_OPACITY).astype(np.uint8)


# -- drawing -------------------------------------------------------------------------------------
def rectangle(width: int, height: int, rows: slice, cols: slice) -> tuple[dict, list[float]]:
    mask = np.zeros((height, width), bool)
    mask[rows, cols] = True
    return encode_rle(mask), [float(cols.start), float(rows.start), float(cols.stop), float(rows.stop)]


def instance(class_id: int, label: str, rows: slice, cols: slice, width=320, height=240,
             track_id: int | None = None) -> InstanceRecord:
    rle, box = rectangle(width, height, rows, cols)
    return InstanceRecord(class_id, label, 0.9, tuple(box), rle, track_id)


def test_instances_take_their_tracks_colour_when_they_have_one():
    people = [instance(1, "person", slice(20, 80), slice(20, 80), track_id=4),
              instance(1, "person", slice(20, 80), slice(120, 180), track_id=9),
              instance(3, "car", slice(120, 200), slice(20, 120))]
    bgr = render_frame(320, 240, people)
    assert (bgr[60, 50] == half_colour(track_colour(4))).all()
    assert (bgr[60, 150] == half_colour(track_colour(9))).all()
    assert (bgr[170, 70] == half_colour(class_colour(3))).all()
    assert len({track_colour(4), track_colour(9), class_colour(1)}) == 3
    assert caption(people[0]) == "#4 person 0.90" and caption(people[2]) == "car 0.90"


def test_frame_image_is_drawn_under_the_masks_at_the_frames_size():
    red = np.zeros((120, 160, 3), np.uint8)
    red[..., 0] = 255  # RGB, sent at half the frame's size
    bgr = render_frame(320, 240, [instance(1, "person", slice(100, 200), slice(100, 200))], red)
    assert bgr.shape == (240, 320, 3)
    assert (bgr[20, 300] == (0, 0, 255)).all()
    expected = (np.array([0, 0, 255]) * (1 - MASK_OPACITY) + np.array(class_colour(1)) * MASK_OPACITY).astype(np.uint8)
    assert (bgr[150, 150] == expected).all()


def is_amber(bgr: np.ndarray) -> np.ndarray:
    """(..., 3) BGR -> (...) bool: the zones' colour (ZONE_COLOUR: high green and red, low blue),
    as JPEG and the browser's scaling of a 2-pixel line leave it."""
    blue, green, red = ZONE_COLOUR
    return (bgr[..., 0] < blue + 100) & (bgr[..., 1] > green - 80) & (bgr[..., 2] > red - 80)


def test_the_views_frames_show_their_streams_zones_placed_in_the_frames_size():
    """A region given for 640x480 frames on a 320x240 stream: outlined at half its coordinates;
    a zone of another stream not at all."""
    frame = FrameRecord("cam1", 0, 0, 0.0, 1.7e9, None, 320, 240, 0, {}, (), zone_counts={"kerb": {}})
    kerb = ZoneConfig("kerb", polygon=[[100, 100], [300, 100], [300, 400], [100, 400]], frame_size=[640, 480])
    elsewhere = ZoneConfig("far", polygon=[[10, 60], [40, 60], [40, 230], [10, 230]], streams=["cam2"])
    shown = cv2.imdecode(np.frombuffer(frame_jpeg(frame, zones=[kerb, elsewhere]), np.uint8), cv2.IMREAD_COLOR)
    assert is_amber(shown[80:190, 149:152]).any(axis=1).all()       # its right side, at x = 150
    assert is_amber(shown[199:202, 70:140]).any(axis=0).all()       # its bottom, at y = 200
    assert not is_amber(shown[80:190, 295:305]).any()               # not at the given x = 300
    assert not is_amber(shown[70:235, 5:45]).any()                  # cam2's zone is not cam1's
    plain = cv2.imdecode(np.frombuffer(frame_jpeg(frame), np.uint8), cv2.IMREAD_COLOR)
    assert plain.max() <= JPEG_TOLERANCE                            # no zones given: none drawn


# -- the page, fed by a publisher whose masks are known ------------------------------------------
KNOWN = [instance(1, "person", slice(60, 180), slice(40, 140)), instance(3, "car", slice(100, 220), slice(180, 300))]


def known_record(stream: str, seq: int) -> FrameRecord:
    return FrameRecord(stream, seq, seq, seq / 25, 1.7e9, None, 320, 240, dropped_before=1, timing_ms={},
                       instances=tuple(KNOWN))


def plain_publisher(zones=(), **publish) -> Publisher:
    """A publisher (no actor) on a free port of 127.0.0.1; ``publish``: PublishSection fields;
    ``zones``: its regions (pipeline.zones.ZoneConfig)."""
    return Publisher(PublishSection(**{"endpoint": ANY_PORT, **publish}), zones=zones)


def publish_until_shown(publisher: Publisher, page, stream: str, make_record=known_record) -> int:
    """Publishes ``stream``'s frames (``make_record(stream, seq)``) until its tile shows one
    (ZeroMQ's slow joiner); the next seq."""
    for seq in range(WARM_UP_LIMIT):
        publisher.publish(make_record(stream, seq))
        page.wait_for_timeout(50)
        if page.locator(f"{tile(stream)}[data-seq]").count():
            return seq + 1
    raise AssertionError(f"stream {stream} never shown after {WARM_UP_LIMIT} frames")


def test_page_draws_known_masks_in_their_class_colours_and_its_regions_counts(page):
    left = ZoneConfig("left", polygon=[[0, 0], [160, 0], [160, 240], [0, 240]])        # the person stands here
    everywhere = ZoneConfig("everywhere", polygon=[[0, 0], [320, 0], [320, 240], [0, 240]])
    publisher = plain_publisher([left, everywhere])
    try:
        with ViewServer(publisher.ready(), port=0, zones=[left, everywhere]) as view:
            page.goto(view.url)
            last = publish_until_shown(publisher, page, "known")
            publisher.publish(known_record("known", last))
            publisher.end_stream("known", last + 1)
            wait_shown(page, "known", last, "ended")
            shot = shown_frame(page, "known", 320, 240)
            names = page.locator(".stream-name").all_inner_texts()
            dropped = page.locator(f"{tile('known')} .dropped").inner_text()
            badge = page.locator(f"{tile('known')} .state-badge").inner_text()
            zones = page.locator(f"{tile('known')} .zones li").all_inner_texts()
    finally:
        publisher.close()
    assert names == ["known"] and dropped == str(last + 1) and badge == f"ended after {last + 1} frames"
    assert zones == ["left: person 1", "everywhere: person 1, car 1"]
    person, car = shot[110:130, 80:100], shot[150:170, 230:250]  # inside each mask, away from edges and captions
    assert np.abs(person.astype(int) - half_colour(class_colour(1))).max() <= JPEG_TOLERANCE
    assert np.abs(car.astype(int) - half_colour(class_colour(3))).max() <= JPEG_TOLERANCE
    assert shot[200:225, 15:35].max() <= JPEG_TOLERANCE  # the black canvas outside every instance and zone line
    assert is_amber(shot[30:50, 156:164]).any(axis=1).all()  # the region "left" outlined: its side at x = 160


TOP, BOTTOM = (200, 60, 20), (20, 120, 200)  # RGB halves of the known picture


def known_picture_record(pixels) -> callable:
    """``known_record``s whose pixels (in the object store) are the known picture."""
    return lambda stream, seq: dataclasses.replace(known_record(stream, seq), pixels=pixels)


def blend(rgb: tuple[int, int, int], bgr: tuple[int, int, int]) -> np.ndarray:
    """A mask of colour ``bgr`` drawn over a pixel of colour ``rgb``: BGR."""
    return (np.array(rgb[::-1]) * (1 - MASK_OPACITY) + np.array(bgr) * MASK_OPACITY).astype(np.uint8)


@pytest.mark.usefixtures("ray_cluster")
def test_page_draws_the_frames_picture_under_its_masks_when_the_wire_carries_it(page):
    """Images on the wire, downscaled to half the frame (image_max_side 160): the page shows the
    picture back at the frame's size, the masks blended over it."""
    picture = np.zeros((240, 320, 3), np.uint8)
    picture[:120], picture[120:] = TOP, BOTTOM
    make = known_picture_record(put_frames(picture[None])[0])
    publisher = plain_publisher(images="jpeg", image_max_side=160)
    try:
        with ViewServer(publisher.ready(), port=0) as view:
            page.goto(view.url)
            last = publish_until_shown(publisher, page, "pictured", make)
            publisher.publish(make("pictured", last))
            publisher.end_stream("pictured", last + 1)
            wait_shown(page, "pictured", last, "ended")
            shot = shown_frame(page, "pictured", 320, 240)
            sent = view.board.newest()["pictured"][1]
    finally:
        publisher.close()
    assert sent.image.shape == (120, 160, 3)  # it travelled at half size
    # Outside every instance: the picture, not the black canvas (away from the halves' border and the captions)
    assert np.abs(shot[20:40, 160:300].astype(int) - TOP[::-1]).max() <= JPEG_TOLERANCE
    assert np.abs(shot[200:230, 10:30].astype(int) - BOTTOM[::-1]).max() <= JPEG_TOLERANCE
    # The person's mask spans both halves: its colour over each
    person = class_colour(1)
    assert np.abs(shot[85:105, 70:110].astype(int) - blend(TOP, person)).max() <= JPEG_TOLERANCE
    assert np.abs(shot[140:170, 70:110].astype(int) - blend(BOTTOM, person)).max() <= JPEG_TOLERANCE
    assert np.abs(shot[150:170, 230:250].astype(int) - blend(BOTTOM, class_colour(3))).max() <= JPEG_TOLERANCE


# -- the page during a real run ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_page_shows_every_stream_of_a_real_run_live(page):
    config = config_for("sources.uris=['a=synthetic:seed=1,width=320,height=240,fps=10,frames=100', "
                        "'b=synthetic:seed=2,width=320,height=240,fps=10,frames=30']",
                        "sources.mode=live", "workers.count=1", "model.score_threshold=0", "publish.images=jpeg")
    endpoint = config.publish.endpoint
    with ViewServer(endpoint, port=0) as view, Consumer(endpoint, ["a", "b"], timeout=RECEIVE_LIMIT_S) as consumer:
        page.goto(view.url)
        received = []
        listening = threading.Thread(target=lambda: received.extend(consumer.messages()), daemon=True)
        listening.start()
        with BackgroundRun(config) as background:
            page.wait_for_function("document.querySelectorAll('.tile[data-seq]').length === 2")
            names = page.locator(".stream-name").all_inner_texts()
            page.wait_for_function("sel => parseFloat(document.querySelector(sel).textContent) > 0",
                                   arg=f"{tile('a')} .fps")
            fps = float(page.locator(f"{tile('a')} .fps").inner_text())
            if os.environ.get("MASKSTREAM_SAVE_SCREENSHOT") == "1":  # for the README: a few seconds in
                page.wait_for_function("sel => Number(document.querySelector(sel).dataset.seq) >= 10", arg=tile("a"))
                page.screenshot(path=SCREENSHOT)
            summary = background.result()
        listening.join()
        ends = {m.stream: m.frames for m in received if isinstance(m, EndOfStream)}
        for stream in ("a", "b"):
            wait_shown(page, stream, ends[stream] - 1, "ended")
        badges = page.locator(".state-badge").all_inner_texts()
        shot = shown_frame(page, "b", 320, 240)
    assert summary.errors == [] and names == ["a", "b"] and fps > 0
    assert badges == [f"ended after {ends['a']} frames", f"ended after {ends['b']} frames"]
    # b's last frame came with its picture: the one the source made for that frame
    last_b = next(m for m in received if m.stream == "b" and getattr(m, "seq", None) == ends["b"] - 1)
    scene = StreetScene(seed=2, width=320, height=240)
    source_rgb, previous_rgb = (scene.frame(last_b.frame_index - back)[0] for back in (0, 1))
    error, previous_error = (np.abs(last_b.image.astype(int) - rgb).mean() for rgb in (source_rgb, previous_rgb))
    assert last_b.image.shape == (240, 320, 3) and error <= 5 and error < previous_error / 2  # JPEG's noise only
    # ... and the browser shows it, its instances' masks in their colours where the publisher put them
    expected = render_frame(320, 240, last_b.instances, source_rgb)
    source_bgr = cv2.cvtColor(source_rgb, cv2.COLOR_RGB2BGR)
    inside = mask_utils.decode([inst.rle for inst in last_b.instances]).any(axis=2)  # (H, W)
    drawn = np.abs(expected[inside].astype(int) - source_bgr[inside]).max(axis=1)
    assert inside.sum() >= 200 and drawn.mean() > 30  # masks there, their colour over the picture
    # Thin masks, box lines and captions: compare after a blur that JPEG's and the browser's
    # resampling errors do not survive, but a missing or miscoloured mask does (its difference is ~100+).
    blurred_shot, blurred_expected = (cv2.GaussianBlur(image, (7, 7), 2).astype(int) for image in (shot, expected))
    assert np.median(np.abs(blurred_shot[inside] - blurred_expected[inside]).max(axis=1)) <= JPEG_TOLERANCE
    # Where nothing is drawn (a margin off every mask, line and caption): the frame's own pixels
    untouched = cv2.erode((expected == source_bgr).all(axis=2).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert untouched.sum() >= 2000 and source_bgr[untouched].max(axis=1).mean() > 40  # a picture, not black
    assert np.median(np.abs(blurred_shot[untouched] - blurred_expected[untouched]).max(axis=1)) <= JPEG_TOLERANCE


# -- a page that stops reading -------------------------------------------------------------------
def striped_record(stream: str, seq: int) -> dict:
    """A 640x480 frame of 12 striped instances: a large JPEG, so that a stalled page's buffers fill."""
    found = []
    for index in range(12):
        mask = np.zeros((480, 640), bool)
        mask[(index * 40):(index * 40 + 40), :] = (np.arange(640) // 3 + seq) % 2 == 0
        rle = encode_rle(mask)
        found.append(InstanceRecord(1 + index % 3, "person", 0.5, (0.0, index * 40.0, 640.0, index * 40.0 + 40), rle))
    return FrameRecord(stream, seq, seq, seq / 25, 1.7e9, None, 640, 480, dropped_before=0, timing_ms={},
                       instances=tuple(found))


def test_a_page_that_stops_reading_holds_back_nothing():
    frames = 150
    publisher = plain_publisher()
    try:
        with ViewServer(publisher.ready(), port=0) as view:
            for seq in range(WARM_UP_LIMIT):  # until the view's subscription is in place
                publisher.publish(known_record("warmup", seq))
                if view.board.newest():
                    break
                threading.Event().wait(0.02)
            with bench_view.StalledViewer(view.url):
                seqs = []
                reading = threading.Thread(target=asyncio.run, args=(read_until(view.url, "cam", frames - 1, seqs),))
                reading.start()
                bench_view.wait_for_viewers(view.url, 2)
                for seq in range(frames):
                    publisher.publish(striped_record("cam", seq))
                publisher.end_stream("cam", frames)
                reading.join()
                state = bench_view.view_state(view.url)
    finally:
        publisher.close()
    cam = next(s for s in state["streams"] if s["stream"] == "cam")
    assert cam["frames"] == frames and cam["ended_after"] == frames  # the subscriber took every frame
    assert seqs[-1] == frames - 1 and seqs == sorted(set(seqs)) and len(seqs) > 1  # newer frames only, to the end
    stalled = [viewer for viewer in state["viewers"] if viewer["waiting"]]
    assert len(stalled) == 1 and stalled[0]["frames_sent"] <= 2  # one frame per stream, then nothing


def run_async(coroutine):
    """``asyncio.run(coroutine)`` on a thread of its own (Playwright keeps an event loop on this one)."""
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=asyncio.run(coroutine)))
    thread.start()
    thread.join()
    return outcome["result"]


async def read_until(url: str, stream: str, last_seq: int, seqs: list) -> None:
    """A page that reads every frame until ``stream`` shows ``last_seq``; its seqs into ``seqs``."""
    stop = asyncio.Event()

    def on_frame(meta, jpeg):
        if meta["stream"] == stream:
            seqs.append(meta["seq"])
            if meta["seq"] == last_seq:
                stop.set()

    await asyncio.wait_for(bench_view.read_frames(url, on_frame, stop), LINE_LIMIT_S)


def test_another_sites_page_cannot_open_the_feed():
    import aiohttp

    async def handshake(origin: str) -> int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(view.url.replace("http", "ws") + "ws", headers={"Origin": origin}):
                    return 101
            except aiohttp.WSServerHandshakeError as error:
                return error.status

    with ViewServer(f"tcp://127.0.0.1:{free_port()}", port=0) as view:
        assert run_async(handshake("http://evil.example")) == 403
        assert run_async(handshake(view.url.rstrip("/"))) == 101


# -- bad input, through the command line ---------------------------------------------------------
def run_view(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.view", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=LINE_LIMIT_S)


@pytest.mark.parametrize("endpoint, message", [
    ("localhost:5555", "error: endpoint 'localhost:5555': expected tcp://HOST:PORT"),
    ("tcp://127.0.0.1", "error: endpoint tcp://127.0.0.1: expected tcp://HOST:PORT with a port number"),
    ("tcp://nosuchhost.invalid:5555", "error: endpoint tcp://nosuchhost.invalid:5555: host 'nosuchhost.invalid' not found"),
])
def test_malformed_or_unknown_endpoint_is_one_line(endpoint, message):
    result = run_view(endpoint)
    assert result.returncode == 2 and result.stderr.startswith(message) and result.stderr.count("\n") == 1
    with pytest.raises(ViewError, match="^" + re.escape(message.removeprefix("error: "))):
        check_endpoint(endpoint)


def test_port_in_use_and_missing_keys_are_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_view("tcp://127.0.0.1:5555", "--port", str(port))
    assert result.returncode == 2
    assert result.stderr == f"error: view address 127.0.0.1:{port}: address already in use (choose another port)\n"
    result = run_view("tcp://127.0.0.1:5555", "--port", "0", "--curve-keys", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and result.stderr.startswith(f"error: curve keys {tmp_path / 'nowhere'}: no such directory")
    assert result.stderr.count("\n") == 1
    (tmp_path / "zones.yaml").write_text("zones:\n  - {name: door, polygon: [[0, 0], [1, 1]]}\n")
    result = run_view("tcp://127.0.0.1:5555", "--port", "0", "--config", str(tmp_path / "zones.yaml"))
    assert (result.returncode, result.stderr) == (2, f"error: {tmp_path / 'zones.yaml'}: zones[0].polygon: "
                                                     "needs at least 3 [x, y] points\n")


class ViewProcess:
    """``python -m pipeline.view ENDPOINT --port 0 ...`` as a user runs it (or, given ``command``,
    ``python COMMAND...``, which starts a view); its lines read as they come, its URL once printed."""

    def __init__(self, endpoint: str | None, *args: str, command: tuple[str, ...] = ()):
        command = command or ("-m", "pipeline.view", endpoint, "--port", "0", *args)
        self.process = subprocess.Popen([sys.executable, *command], cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self._lines = queue.Queue()
        self.output = {"out": [], "err": []}  # the lines read so far, per pipe
        for pipe, name in ((self.process.stdout, "out"), (self.process.stderr, "err")):
            threading.Thread(target=self._read, args=(pipe, name), daemon=True).start()
        self.url = self.wait_for("out", "view: http").split()[1]

    @property
    def errors(self) -> list[str]:
        return self.output["err"]

    def _read(self, pipe, name: str) -> None:
        for line in pipe:
            self._lines.put((name, line))
        self._lines.put((name, None))

    def wait_for(self, pipe: str, text: str) -> str:
        """The first line of ``pipe`` ("out" or "err") containing ``text``, once it has come."""
        while True:
            found = [line for line in self.output[pipe] if text in line]
            if found:
                return found[0]
            try:
                name, line = self._lines.get(timeout=LINE_LIMIT_S)
            except queue.Empty:
                raise AssertionError(f"the view said no {text!r} in {LINE_LIMIT_S} s: {self.output}") from None
            if line is None:
                if name == pipe:
                    raise AssertionError(f"the view's std{pipe} ended before {text!r}: {self.output}")
                continue
            self.output[name].append(line)

    def __enter__(self) -> "ViewProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # Ctrl-C: the view stops cleanly
        self.process.wait(timeout=LINE_LIMIT_S)
        while not self._lines.empty():
            name, line = self._lines.get()
            if line is not None:
                self.output[name].append(line)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_the_moment_the_view_is_up_stops_it_cleanly(signum):
    """The signal right after the address is printed, while the view may still be between starting
    and waiting: it stops with status 0 and no traceback (a KeyboardInterrupt raised outside the
    wait would exit by the signal and leave its threads; SIGTERM, a service manager's stop, would
    kill it uncleanly)."""
    for _ in range(3):
        view = ViewProcess(f"tcp://127.0.0.1:{free_port()}")
        view.process.send_signal(signum)
        with view:
            pass
        assert view.process.returncode == 0 and not any("Traceback" in line for line in view.errors), view.output


def test_unreachable_endpoint_is_one_line_in_the_terminal_and_on_the_page(page):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with ViewProcess(endpoint) as view:
        line = view.wait_for("err", "nothing answers")
        page.goto(view.url)
        page.wait_for_function("() => document.getElementById('status').textContent.includes('nothing answers')")
        status, level = page.locator("#status").inner_text(), page.locator("#status").get_attribute("data-level")
        publisher = plain_publisher(endpoint=endpoint)  # the pipeline comes up: the view connects by itself
        try:
            connected = view.wait_for("err", "connected to")
        finally:
            publisher.close()
    assert line == f"view: {endpoint}: nothing answers (is the pipeline running?); retrying\n"
    assert status == line.removeprefix("view: ").strip() and level == "warn"
    assert connected == f"view: connected to {endpoint}\n"
    assert view.process.returncode == 0 and not any("Traceback" in error for error in view.errors)


def consumer_keys(root: Path, name: str, server_public: Path, listed_in: Path | None) -> Path:
    """A viewer's key directory holding ``server_public`` as server.key; its key listed on a server or not."""
    directory = root / name
    keys.make_key_pair(directory, name)
    shutil.copy(server_public, directory / "server.key")
    if listed_in is not None:
        shutil.copy(directory / f"{name}.key", listed_in / f"{name}.key")
    return directory


@pytest.mark.slow
def test_wrong_or_missing_curve_keys_are_one_line_in_the_terminal_and_on_the_page(tmp_path, page):
    server = tmp_path / "server"
    keys.make_key_pair(server, "server")
    other = tmp_path / "other"
    keys.make_key_pair(other, "server")  # another publisher's key pair
    listed = consumer_keys(tmp_path, "alice", server / "server.key", server / "clients")
    unlisted = consumer_keys(tmp_path, "mallory", server / "server.key", None)
    wrong_server = consumer_keys(tmp_path, "eve", other / "server.key", server / "clients")
    publisher = plain_publisher(curve_keys=str(server))
    endpoint = publisher.ready()
    cases = [((), f"{endpoint}: the publisher refused the handshake: it is encrypted (run the view with --curve-keys DIR"),
             (("--curve-keys", str(unlisted)), f"{endpoint}: the publisher refused this viewer's CURVE key"),
             (("--curve-keys", str(wrong_server)), f"{endpoint}: the CURVE handshake failed: server.key in the key "
                                                   f"directory is not the publisher's public key"),
             (("--curve-keys", str(listed)), f"connected to {endpoint} (CURVE)")]
    try:
        for args, expected in cases:
            with ViewProcess(endpoint, *args) as view:
                line = view.wait_for("err", expected.split(": ", 1)[-1])
                if args and args[1] == str(unlisted):
                    page.goto(view.url)
                    page.wait_for_function("() => document.getElementById('status').dataset.level === 'error'")
                    status = page.locator("#status").inner_text()
            assert line.startswith(f"view: {expected}") and view.errors == [line], (args, view.errors)
            assert view.process.returncode == 0
    finally:
        publisher.close()
    assert status == f"{endpoint}: the publisher refused this viewer's CURVE key (ZAP status 400): " \
                     f"copy its public <name>.key into the publisher's clients/ and restart the view"


# -- maskstream run --view -----------------------------------------------------------------------
def test_run_view_flag_serves_the_view_with_the_frames_pictures():
    args = run_command.parse_args(["--view"])
    assert args.view == 8080 and load_pipeline_config(None, run_command.overrides(args)).publish.images == "jpeg"
    assert run_command.parse_args(["--view", "0"]).view == 0 and run_command.parse_args([]).view is None
    assert load_pipeline_config(None, run_command.overrides(run_command.parse_args([]))).publish.images == "none"
    kept_off = run_command.parse_args(["--view", "9000", "--set", "publish.images=none"])
    assert load_pipeline_config(None, run_command.overrides(kept_off)).publish.images == "none"


def test_run_view_on_a_port_in_use_or_without_a_publish_port_is_one_line_before_the_run(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_command.main(["--view", str(port), "--publish", f"tcp://127.0.0.1:{free_port()}"]) == 2
    in_use = f"error: view address 127.0.0.1:{port}: address already in use (choose another port)\n"
    assert capsys.readouterr().err == in_use
    assert run_command.main(["--view", "0", "--publish", "tcp://127.0.0.1:*"]) == 2
    assert capsys.readouterr().err == ("error: publish endpoint tcp://127.0.0.1:*: the view needs its port number "
                                       "(e.g. tcp://127.0.0.1:5555)\n")


@pytest.mark.slow
def test_run_with_view_prints_its_address_and_the_page_shows_the_encrypted_run(tmp_path, page):
    """``run_pipeline.py --view 0`` with CURVE on, as a user runs it: the page connects with the
    publisher's own key pair and shows the stream's frames, pictures and masks, as the run's own
    files record them."""
    server = tmp_path / "server"
    keys.make_key_pair(server, "server")
    consumer_keys(tmp_path, "alice", server / "server.key", server / "clients")
    endpoint, out = f"tcp://127.0.0.1:{free_port()}", tmp_path / "out"
    settings = [f"model.config={TINY}", "model.weights=null", "workers.cpus=1", "progress=false"]
    command = ["run_pipeline.py", "--source", "cam=synthetic:seed=3,width=320,height=240,frames=40",
               "--publish", endpoint, "--curve-keys", str(server), "--out", str(out), "--view", "0",
               *(arg for setting in settings for arg in ("--set", setting))]
    with ViewProcess(None, command=tuple(command)) as run:
        page.goto(run.url)
        page.wait_for_function("sel => document.querySelector(sel) !== null", arg=f"{tile('cam')}[data-seq]")
        page.wait_for_function("() => document.getElementById('status').textContent.includes('(CURVE)')")
        status = page.locator("#status").inner_text()
        run.process.wait(timeout=RECEIVE_LIMIT_S)  # the run ends; the page keeps its last frame
    address = run.wait_for("out", "view: http")
    assert address == f"view: {run.url} shows this run ({endpoint})\n" and run.url.startswith("http://127.0.0.1:")
    assert run.process.returncode == 0 and not any("Traceback" in line or "view:" in line for line in run.errors)
    assert status == f"connected to {endpoint} (CURVE)"
    seq = int(page.locator(tile("cam")).get_attribute("data-seq"))
    shot = shown_frame(page, "cam", 320, 240)
    header = json.loads((out / "cam.jsonl").read_text().splitlines()[seq])
    frame = FrameRecord.from_wire({k: v for k, v in header.items() if k != "image"})
    assert header["seq"] == seq and header["image"] == {"format": "jpeg", "width": 320, "height": 240}
    source_rgb = StreetScene(seed=3, width=320, height=240).frame(frame.frame_index)[0]
    expected = render_frame(320, 240, frame.instances, source_rgb)
    blurred_shot, blurred_expected = (cv2.GaussianBlur(image, (7, 7), 2).astype(int) for image in (shot, expected))
    assert np.median(np.abs(blurred_shot - blurred_expected).max(axis=2)) <= JPEG_TOLERANCE  # picture and masks

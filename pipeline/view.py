"""The live view: every stream of a publisher in the browser, masks drawn, as it happens.

    maskstream view tcp://127.0.0.1:5555 [--port 8080] [--host 127.0.0.1] [--curve-keys DIR]
    maskstream run --view [PORT]        # the same beside a run (pipeline.run.live_view)

then open http://127.0.0.1:8080/: one tile per stream heard, the frame with its instances drawn
(``pipeline.overlay``: masks, boxes, labels, scores, track ids) and its figures: frames/s,
latency (its arrival here - captured_at: clocks of two machines may differ; and published_at -
captured_at), dropped frames (the sum of ``dropped_before``), instances per frame; a stream
that ended says so. The instances are drawn on the frame's own picture when the publisher sends
images (``publish.images: jpeg``; ``maskstream run --view`` turns them on), else on a black
canvas of the frame's size. Zones (regions, counting lines) are drawn with their counts when the
view knows them: the run's own beside a run, ``--config FILE`` (a pipeline config's ``zones:``)
for a view of a pipeline already running; the wire carries the counts, not the geometry.

One job per part:

- ``Subscriber``: a thread that receives every stream (the consumer SDK) and keeps on the
  ``Board`` only each stream's newest frame and its figures. It never waits for a viewer. A
  ZeroMQ socket monitor (``Consumer(on_event=...)``) turns connection and CURVE handshake events
  into one status line (``ConnectionWatch``), printed in the terminal and shown on the page.
- ``Renderer``: draws a stream's newest frame into a JPEG, on one thread, once per frame
  whatever the number of viewers, and only when a viewer is ready for it.
- the web app (aiohttp): ``/`` the page (``view_static/``: HTML, JS, CSS, nothing fetched from
  elsewhere), ``/ws`` a WebSocket per open page, ``/state.json`` the status and figures and,
  per open page, the frames sent to it and the streams whose last frame it has not acknowledged.

Drawing is done here, not in the page, so that ``pipeline.overlay`` (COCO RLE decoding included)
is the one drawing code; one WebSocket per page, not an MJPEG connection per stream, because
browsers open at most six connections per host.

The WebSocket carries text messages, the state (``Board.state``) twice a second, and binary
frame messages: a 4-byte big-endian length, that many bytes of JSON ``{"stream", "seq"}``, then
the JPEG. The page answers each frame with ``{"ack": stream}`` once it has shown it; until then
that stream sends this viewer nothing more, and after it the newest frame, not those in between:
at most one frame per stream is on its way to a viewer, so a slow browser sees fewer frames,
never older ones, and a browser that stops reading holds back no one (the server's own send
buffer per connection is bounded by aiohttp's writer limit).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import socket
import struct
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import zmq
from aiohttp import WSMsgType, web

from models.errors import ViewError, command, on_signals

from .config import load_pipeline_config
from .consumer import Consumer
from .overlay import draw_zones, render_frame
from .protocol import EndOfStream, FrameRecord
from .zones import ZoneConfig, zone_figures, zone_geometry

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
STATIC_DIR = Path(__file__).resolve().parent / "view_static"
WINDOW_S = 10.0            # frames/s, latency and instances are over a stream's last frames:
WINDOW_FRAMES = 50         # those of the last 10 s, at most 50
STATE_INTERVAL_S = 0.5     # how often each page gets the state
JPEG_QUALITY = 80
POLL_MS = 100              # the subscriber looks at its stop flag this often when idle
RECEIVE_BURST = 256        # messages read in a row before the monitor gets a look
HEARTBEAT_S = 30.0         # a page that answers no ping for half of this is disconnected
CLOSE_TIMEOUT_S = 1.0      # wait for a page's close handshake at most this long
STOP_TIMEOUT_S = 5.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Status:
    """The subscriber's connection, in one line: ``level`` is ok, warn or error."""
    level: str
    text: str
    kind: str  # connecting, connected, gone, unreachable, refused, handshake, protocol


@dataclass
class _StreamState:
    """What the board keeps of one stream; a stream that starts again begins a new generation."""
    generation: int
    frame: FrameRecord | None = None
    frames: int = 0                 # received in this generation
    dropped: int = 0                # sum of dropped_before
    ended_after: int | None = None  # the frame count of its EOS, once received
    last_arrival: float = 0.0       # time.monotonic()
    # (arrived monotonic, latency ms, publish ms, instances) of its last frames
    window: deque = field(default_factory=lambda: deque(maxlen=WINDOW_FRAMES))


class Board:
    """Each stream's newest frame and figures, and the connection status.

    Written by the subscriber's thread, read by the web server's; ``on_change`` (called on the
    subscriber's thread after every change) must return at once.
    """

    def __init__(self, endpoint: str, on_change=None, on_status=None):
        self.endpoint = endpoint
        self.on_change = on_change or (lambda: None)
        self.on_status = on_status or (lambda status: None)
        self.status = Status("warn", f"{endpoint}: connecting", "connecting")
        self._streams: dict[str, _StreamState] = {}
        self._generations = 0
        self._lock = threading.Lock()

    def add_frame(self, frame: FrameRecord) -> None:
        arrived, now = time.monotonic(), time.time()
        with self._lock:
            state = self._streams.get(frame.stream)
            if state is None or state.ended_after is not None or (state.frame and frame.seq < state.frame.seq):
                self._generations += 1
                state = self._streams[frame.stream] = _StreamState(self._generations)
            state.frame = frame
            state.frames += 1
            state.dropped += frame.dropped_before
            state.last_arrival = arrived
            state.window.append((arrived, (now - frame.captured_at) * 1e3,
                                 (frame.published_at - frame.captured_at) * 1e3, len(frame.instances)))
            _trim(state.window, arrived)
        self.on_change()

    def end_stream(self, stream: str, frames: int) -> None:
        with self._lock:
            if stream not in self._streams:
                self._generations += 1
                self._streams[stream] = _StreamState(self._generations)
            self._streams[stream].ended_after = frames
        self.on_change()

    def set_status(self, status: Status) -> None:
        """Takes a new status; ``on_status`` hears of it when its line differs from the last."""
        with self._lock:
            changed = status.text != self.status.text
            self.status = status
        if changed:
            self.on_status(status)
            self.on_change()

    def newest(self) -> dict[str, tuple[tuple[int, int], FrameRecord]]:
        """{stream: ((generation, seq), newest frame)} for the streams with a frame."""
        with self._lock:
            return {stream: ((state.generation, state.frame.seq), state.frame)
                    for stream, state in self._streams.items() if state.frame is not None}

    def state(self) -> dict:
        """The status and every stream's figures, JSON-ready (what the page shows)."""
        now = time.monotonic()
        with self._lock:
            streams = [_figures(stream, state, now) for stream, state in sorted(self._streams.items())]
            status = self.status
        return {"endpoint": self.endpoint, "status": {"level": status.level, "text": status.text},
                "streams": streams}


def _trim(window: deque, now: float) -> None:
    while window and window[0][0] < now - WINDOW_S:
        window.popleft()


def _figures(stream: str, state: _StreamState, now: float) -> dict:
    """One stream's figures over its last frames (WINDOW_S, WINDOW_FRAMES)."""
    _trim(state.window, now)
    frame, window, ended = state.frame, state.window, state.ended_after is not None
    span = window[-1][0] - window[0][0] if len(window) >= 2 else 0.0
    _, latency_ms, publish_ms, instances = (np.array(column, float) for column in zip(*window)) if window else [None] * 4
    return {"stream": stream, "state": "ended" if ended else "live",
            "seq": frame.seq if frame else None, "frames": state.frames,
            "width": frame.width if frame else None, "height": frame.height if frame else None,
            "fps": (len(window) - 1) / span if span > 0 and not ended else 0.0,
            "latency_ms": float(latency_ms.mean()) if window else None,
            "publish_latency_ms": float(publish_ms.mean()) if window else None,
            "dropped": state.dropped,
            "instances": float(instances.mean()) if window else (len(frame.instances) if frame else None),
            "idle_s": now - state.last_arrival if frame else None, "ended_after": state.ended_after,
            "zones": [f"{name}: {text}" for name, text in zone_figures(frame).items()] if frame else []}


class ConnectionWatch:
    """Turns the subscriber socket's monitor events into a status (None: no news).

    ZeroMQ shows a refused or wrong CURVE key only as events. An unlisted viewer key is
    HANDSHAKE_FAILED_AUTH (ZAP status 400). A wrong server key, or a plain viewer and an encrypted
    publisher (or the other way round), is HANDSHAKE_FAILED_PROTOCOL (mechanism mismatch) or,
    as often, HANDSHAKE_FAILED_NO_DETAIL (the publisher hung up first): the two are one status,
    so that the line does not change with the race. A lone NO_DETAIL (a publisher stopping
    mid-handshake) is not reported: only one that repeats.
    """

    def __init__(self, endpoint: str, encrypted: bool):
        self.endpoint, self.encrypted = endpoint, encrypted
        self.kind = "connecting"
        self._reached = False  # a TCP connection was made since the last retry
        self._unexplained = 0  # handshakes failed in a row with no detail

    def status(self, event: int, value: int) -> Status | None:
        found = self._classify(event, value)
        if found is not None:
            self.kind = found.kind
        return found

    def _classify(self, event: int, value: int) -> Status | None:
        e = self.endpoint
        if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self._unexplained += 1
        elif event in (zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
            self._unexplained = 0
        if event == zmq.EVENT_CONNECTED:
            self._reached = True
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            return Status("ok", f"connected to {e}" + (" (CURVE)" if self.encrypted else ""), "connected")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return Status("error", f"{e}: the publisher refused this viewer's CURVE key (ZAP status {value}): "
                                   f"copy its public <name>.key into the publisher's clients/ and restart the view",
                          "refused")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL or self._unexplained >= 2:
            return Status("error", f"{e}: the CURVE handshake failed: server.key in the key directory is not the "
                                   f"publisher's public key, or the publisher is not encrypted" if self.encrypted else
                          f"{e}: the publisher refused the handshake: it is encrypted (run the view with "
                          f"--curve-keys DIR, see python -m pipeline.keys) or not a maskstream publisher", "handshake")
        elif event == zmq.EVENT_DISCONNECTED and self.kind == "connected":
            return Status("warn", f"{e}: the publisher went away (its run ended?); waiting for it", "gone")
        elif event == zmq.EVENT_CLOSED or (event == zmq.EVENT_CONNECT_RETRIED and not self._reached):
            if self.kind not in ("gone", "unreachable"):
                return Status("warn", f"{e}: nothing answers (is the pipeline running?); retrying", "unreachable")
        if event == zmq.EVENT_CONNECT_RETRIED:
            self._reached = False
        return None


def check_endpoint(endpoint: str) -> None:
    """A one-line ViewError for an endpoint that cannot work: not TRANSPORT://ADDRESS, a tcp one
    without a port number or whose host does not resolve."""
    scheme, sep, address = endpoint.partition("://")
    if not sep or not address:
        raise ViewError(f"endpoint {endpoint!r}: expected tcp://HOST:PORT")
    if scheme != "tcp":
        return
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ViewError(f"endpoint {endpoint}: expected tcp://HOST:PORT with a port number")
    host = host.strip("[]")
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ViewError(f"endpoint {endpoint}: host {host!r} not found ({error.strerror})") from None


def connect_address(endpoint: str) -> str:
    """Where a subscriber on this machine reaches a publisher bound at ``endpoint``: a wildcard
    host (``*``, 0.0.0.0, ``::``) is this machine's loopback; a one-line ViewError when the port
    is a wildcard, known only once the publisher has bound it."""
    scheme, sep, address = endpoint.partition("://")
    if scheme != "tcp":
        return endpoint
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ViewError(f"publish endpoint {endpoint}: the view needs its port number (e.g. tcp://127.0.0.1:5555)")
    host = {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
    return f"tcp://{host}:{port}"


class Subscriber:
    """Receives every stream of ``endpoint`` on its own thread into ``board``.

    Connects on construction (a bad endpoint or key directory raises a one-line error then);
    ``start`` starts the thread, ``stop`` ends it and closes the socket.
    """

    def __init__(self, endpoint: str, curve_keys: str | Path | tuple[bytes, bytes, bytes] | None, board: Board):
        check_endpoint(endpoint)
        self.board = board
        self._watch = ConnectionWatch(endpoint, curve_keys is not None)
        try:
            self._consumer = Consumer(endpoint, curve_keys=curve_keys, on_event=self._on_event)
        except zmq.ZMQError as error:  # any other transport the consumer does not check
            raise ViewError(f"endpoint {endpoint}: {error.strerror}") from None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="view-subscriber", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._read_messages()

    def _on_event(self, event: int, value: int) -> None:
        status = self._watch.status(event, value)
        if status is not None:
            self.board.set_status(status)

    def _read_messages(self) -> None:
        """What arrived within POLL_MS, at most RECEIVE_BURST messages (connection events are
        handled on the way, by ``_on_event``)."""
        for burst in range(RECEIVE_BURST):
            malformed = self._consumer.malformed
            message = self._consumer.receive(timeout=POLL_MS / 1000 if burst == 0 else 0)
            if self._consumer.malformed > malformed:
                self.board.set_status(Status("warn", f"{self.board.endpoint}: skipped a message that is not "
                                                     f"maskstream wire protocol v1", "protocol"))
            if message is None:
                return
            if isinstance(message, EndOfStream):
                self.board.end_stream(message.stream, message.frames)
                continue
            if not isinstance(message, FrameRecord):  # a gap: the frames/s and dropped figures show it
                continue
            if self._watch.kind != "connected":  # a frame proves the connection, events or not
                self.board.set_status(self._watch.status(zmq.EVENT_HANDSHAKE_SUCCEEDED, 0))
            self.board.add_frame(message)


def frame_jpeg(frame: FrameRecord, quality: int = JPEG_QUALITY, zones: list[ZoneConfig] = ()) -> bytes:
    """The frame with its instances drawn, and those of `zones` that apply to its stream with the
    frame's counts (placed in its size: `pipeline.zones.zone_geometry`), as JPEG bytes."""
    bgr = render_frame(frame.width, frame.height, frame.instances, frame.image)
    mine = [zone for zone in zones if zone.applies_to(frame.stream)]
    if mine:
        draw_zones(bgr, zone_geometry(mine, (frame.width, frame.height)), zone_figures(frame))
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"stream {frame.stream} seq {frame.seq}: JPEG encoding failed")
    return data.tobytes()


class Renderer:
    """JPEGs of the streams' newest frames, drawn on one thread, each frame once for every viewer.

    Used from the web server's event loop only. `zones`: drawn on the frames of their streams.
    """

    def __init__(self, zones: list[ZoneConfig] = ()):
        self.zones = list(zones)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="view-render")
        self._latest: dict[str, tuple[tuple[int, int], object]] = {}  # stream -> (key, Future of bytes)

    async def jpeg(self, stream: str, key: tuple[int, int], frame: FrameRecord) -> bytes:
        latest = self._latest.get(stream)
        if latest is None or latest[0] != key:
            latest = self._latest[stream] = (key, self._executor.submit(frame_jpeg, frame, JPEG_QUALITY, self.zones))
        return await asyncio.wrap_future(latest[1])

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def pack_frame(stream: str, seq: int, jpeg: bytes) -> bytes:
    """A binary frame message: 4-byte big-endian meta length, meta JSON, JPEG."""
    meta = json.dumps({"stream": stream, "seq": seq}).encode()
    return struct.pack(">I", len(meta)) + meta + jpeg


def unpack_frame(data: bytes) -> tuple[dict, bytes]:
    """The (meta, JPEG) of a binary frame message, for Python clients of ``/ws``."""
    (length,) = struct.unpack_from(">I", data)
    return json.loads(data[4:4 + length]), data[4 + length:]


@dataclass(eq=False)
class _Viewer:
    """One open page: the streams whose last frame it has not acknowledged yet."""
    ws: web.WebSocketResponse
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: set = field(default_factory=set)
    sent: dict = field(default_factory=dict)  # stream -> key of the last frame sent
    frames_sent: int = 0


class _Wakeups:
    """Wakes every viewer when the board changes; callable from any thread, coalesced."""

    def __init__(self, loop: asyncio.AbstractEventLoop, viewers: set):
        self._loop, self._viewers = loop, viewers
        self._scheduled = False

    def notify(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop has closed: the view is stopping
                pass

    def _wake(self) -> None:
        self._scheduled = False
        for viewer in self._viewers:
            viewer.wake.set()


def make_app(board: Board, renderer: Renderer, viewers: set) -> web.Application:
    """The web app: the page, its static files, ``/ws`` and ``/state.json``."""

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def state(request: web.Request) -> web.Response:
        body = board.state()
        body["viewers"] = [{"frames_sent": v.frames_sent, "waiting": sorted(v.waiting)} for v in viewers]
        return web.json_response(body)

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden(text=f"origin {origin} may not open this view")
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, timeout=CLOSE_TIMEOUT_S, compress=False)
        await ws.prepare(request)
        viewer = _Viewer(ws)
        viewers.add(viewer)
        feeding = asyncio.create_task(_feed(viewer, board, renderer))
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    _acknowledge(viewer, message.data)
        finally:
            viewers.discard(viewer)
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeding
        return ws

    async def close_pages(app: web.Application) -> None:
        await asyncio.gather(*(viewer.ws.close(code=1001, message=b"view stopped") for viewer in list(viewers)),
                             return_exceptions=True)

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/state.json", state)
    app.router.add_get("/ws", websocket)
    app.router.add_static("/static/", STATIC_DIR)
    app.on_shutdown.append(close_pages)
    return app


def _acknowledge(viewer: _Viewer, text: str) -> None:
    """A page has shown a stream's frame: that stream may send it the next one."""
    try:
        stream = json.loads(text).get("ack")
    except (json.JSONDecodeError, AttributeError):
        return
    if stream in viewer.waiting:
        viewer.waiting.discard(stream)
        viewer.wake.set()


async def _feed(viewer: _Viewer, board: Board, renderer: Renderer) -> None:
    """Sends a page the state every STATE_INTERVAL_S and each stream's newest frame when it is ready."""
    ws = viewer.ws
    next_state = 0.0
    try:
        while not ws.closed:
            viewer.wake.clear()
            if time.monotonic() >= next_state:
                await ws.send_str(json.dumps(board.state()))
                next_state = time.monotonic() + STATE_INTERVAL_S
            for stream, (key, frame) in board.newest().items():
                if stream in viewer.waiting or viewer.sent.get(stream) == key:
                    continue
                try:
                    jpeg = await renderer.jpeg(stream, key, frame)
                except Exception as error:  # a frame that cannot be drawn: skip it, say so
                    board.set_status(Status("warn", f"stream {stream} seq {frame.seq}: cannot draw it: {error}",
                                            "protocol"))
                    viewer.sent[stream] = key
                    continue
                await ws.send_bytes(pack_frame(stream, frame.seq, jpeg))
                viewer.sent[stream] = key
                viewer.waiting.add(stream)
                viewer.frames_sent += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(viewer.wake.wait(), max(0.0, next_state - time.monotonic()))
    except ConnectionError:  # the page went away mid-send
        pass


class ViewServer:
    """The view, running: the subscriber's thread and the web server on an event loop thread.

        with ViewServer("tcp://127.0.0.1:5555", port=0) as view:   # port 0: any free port
            print(view.url, view.board.state())

    ``start`` raises a one-line MaskstreamError (ViewError, ConsumerError, CurveKeyError) for a
    bad endpoint, key directory or a port in use. ``curve_keys``: a consumer key directory or
    the keys themselves (see ``Consumer``). ``on_status(Status)`` hears every new status line,
    on the subscriber's thread. ``zones``: the pipeline's, drawn on the frames with their counts.
    """

    def __init__(self, endpoint: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 curve_keys: str | Path | tuple[bytes, bytes, bytes] | None = None, on_status=None,
                 zones: list[ZoneConfig] = ()):
        self.endpoint, self.host, self.port, self.curve_keys = endpoint, host, port, curve_keys
        self.zones = list(zones)
        self.board = Board(endpoint, on_status=on_status)
        self._subscriber = self._loop = self._thread = self._runner = self._renderer = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> "ViewServer":
        self._subscriber = Subscriber(self.endpoint, self.curve_keys, self.board)
        try:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="view-web", daemon=True)
            self._thread.start()
            asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result()
        except Exception:
            self.stop()
            raise
        self._subscriber.start()
        return self

    async def _serve(self) -> None:
        viewers = set()
        self._renderer = Renderer(self.zones)
        self.board.on_change = _Wakeups(asyncio.get_running_loop(), viewers).notify
        self._runner = web.AppRunner(make_app(self.board, self._renderer, viewers), access_log=None,
                                     shutdown_timeout=CLOSE_TIMEOUT_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as error:
            reason = os.strerror(error.errno).lower() if error.errno else str(error)
            raise ViewError(f"view address {self.host}:{self.port}: {reason}"
                            + (" (choose another port)" if error.errno == errno.EADDRINUSE else "")) from None
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        """Stops receiving, closes the pages' connections and the server; safe to call twice."""
        if self._subscriber is not None:
            self._subscriber.stop()
            self._subscriber = None
        if self._loop is not None and self._loop.is_running():
            if self._runner is not None:
                cleanup = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
                with contextlib.suppress(Exception):
                    cleanup.result(STOP_TIMEOUT_S)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
        if self._renderer is not None:
            self._renderer.close()
        self._loop = None

    def __enter__(self) -> "ViewServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="maskstream view",
        description="Watch a maskstream publisher live in the browser: every stream, its masks, "
                    "boxes, labels and scores drawn, with frames/s, latency and dropped frames.")
    parser.add_argument("endpoint", help="publisher endpoint, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"HTTP port of the page (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to serve the page on (default {DEFAULT_HOST}: this machine only; "
                             f"0.0.0.0 lets anyone on the network watch, without a password)")
    parser.add_argument("--curve-keys", metavar="DIR",
                        help="consumer key directory for an encrypted publisher (see python -m pipeline.keys)")
    parser.add_argument("--config", metavar="FILE",
                        help="the pipeline config of the run watched: its zones are drawn with their counts")
    args = parser.parse_args(argv)
    if not 0 <= args.port < 65536:
        parser.error(f"--port {args.port}: must be 0-65535")
    return args


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def say(status: Status) -> None:
        print(f"view: {status.text}", file=sys.stderr, flush=True)

    zones = load_pipeline_config(args.config).zones if args.config else []
    view = ViewServer(args.endpoint, args.host, args.port, args.curve_keys, on_status=say, zones=zones)
    stopping = threading.Event()  # Ctrl-C or SIGTERM, whenever it comes, ends the wait below and nothing else
    with on_signals(lambda signum, frame: stopping.set()):
        try:
            view.start()
            print(f"view: {view.url} shows {args.endpoint} (Ctrl-C stops)", flush=True)
            if args.host not in LOOPBACK_HOSTS:
                print(f"view: serving on {args.host}: anyone who can reach it sees the streams", file=sys.stderr)
            while not stopping.wait(1.0):
                pass
        finally:
            view.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

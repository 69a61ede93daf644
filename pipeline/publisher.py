"""The publisher: each stream's frames back in ``seq`` order, out over ZeroMQ and into file sinks.

Interface with the pipeline core::

    publisher = PublisherActor.options(...).remote(PublishSection(...), OutputSection(...), class_names,
                                                   live, TrackingConfig(...), publish_score)
    endpoint = ray.get(publisher.ready.remote())  # the bound endpoint; bind and key errors show here
    publisher.open_stream.remote(stream_id, fps)  # before its frames: the source's frame rate
    publisher.publish.remote(record)              # a FrameRecord, any order; sent in seq order per stream
    publisher.publish_many.remote([record, ...])  # the same for a batch's records, in one call
    publisher.end_stream.remote(stream_id, frames)
    ray.get(publisher.stats.remote())             # during the run
    ray.get(publisher.close.remote())             # at the end or on Ctrl-C; returns the final stats

``record`` is a ``pipeline.protocol.FrameRecord``; its ``pixels`` (a FrameRef into the object
store) are read only when the overlay video or the images on the wire are on (inside a record
Ray passes the reference on instead of resolving it). With ``publish.images: jpeg`` each frame
whose record has pixels goes out with them as a JPEG third part (``pipeline.images``).

- ``seq`` must run 0, 1, 2, ... per stream: a missing seq holds back later frames until it
  arrives (or until ``close``, which sends what is waiting). A seq seen before (a batch retried
  after a worker died) is dropped and counted.
- Each sent header gets ``published_at`` and ``timing_ms["publish"]``: milliseconds from the
  record's arrival here to its sending, which includes waiting for earlier seqs.
- ``open_stream(stream_id, fps)`` opens the stream's files; the overlay video runs at
  ``output.overlay_fps`` if set, else at ``fps``, the source's own rate. A stream not opened
  before its first frame opens then, as a source that does not say its rate (FALLBACK_FPS).
- ``end_stream(stream_id, frames)``: once seqs 0..frames-1 are out, closes that stream's files
  and sends EOS. ``close()`` sends what is waiting, EOS for every stream not yet ended, closes
  the socket and files, and returns ``stats()``.
- With a ``TrackingConfig`` whose ``enabled`` is true, each stream has a
  ``pipeline.tracking.TrackingStage`` that every frame passes, in seq order and exactly once,
  just before it is sent: it sets the instances' ``track_id`` and the frame's ``tracks_ended``
  and keeps the instances to publish (those scoring above ``publish_score``, and weaker ones
  continuing a track); EOS carries the tracks still alive. ``progress()`` hands out each
  tracker's state (a snapshot, before the first seq not yet sent), and ``resume`` takes it
  back: a restarted publisher sending seqs again gives them the ids the crashed one gave.
- ``stats()``: ``{"endpoint", "streams": {id: {published, duplicates_dropped, last_seq, waiting,
  dropped_before, missing, ended, latency_ms: {stage: {count, p50, p95, p99}}}}, "delivery": {...}}``,
  where the stages are the records' ``timing_ms`` stages, ``publish`` and ``end_to_end`` (capture
  to publish), and ``delivery`` is ``delivery()``'s counters.

Delivery (the socket is an XPUB, which sees each subscription come and go):

- ``publish.wait_subscribers`` N holds each stream's first frame until N subscriptions cover its
  topic (a subscriber to every stream covers them all); after ``publish.wait_timeout_s`` the call
  fails with one line saying how many came.
- Offline (``live=False``) a send never drops: ZeroMQ's ``XPUB_NODROP`` makes a send to a
  subscriber whose queue (``publish.hwm``) is full fail, and the publisher waits until it has room,
  so a slow subscriber slows the pipeline (the scheduler and the readers wait behind this call).
  A subscriber whose host vanished (its TCP connection acknowledges nothing for
  ``publish.stall_timeout_s``) is disconnected by the kernel, and its queue with it. If nothing
  could be sent for ``publish.stall_timeout_s`` (a subscriber alive but not reading), the
  publisher disconnects the connections that still
  hold unsent bytes in their kernel queue (after that long without a send, a subscriber that
  reads has emptied its own), says so in one line and goes on losslessly for the others; the
  one cut off may connect again and sees gaps. Where it cannot tell (no such connection found),
  it sends on with ZeroMQ dropping for full queues only, until a subscriber leaves.
- Live (``live=True``) a send never waits: a frame that could not be queued for every subscriber
  (one's queue was full) goes to the others and is counted as ``undelivered``; only a stream's
  EOS waits, up to ``stall_timeout_s``, so that a subscriber that is merely behind learns the end;
  once some queue was full it also goes again while the connections drain (``_repeat_while_draining``).
- Each ``publish``/``publish_many``/``end_stream`` call answers ``progress()``: the first seq not
  yet sent per stream and the streams whose EOS went out, so that the caller can keep what is
  not sent yet. A publisher restarted by Ray (after a crash) binds nothing and holds every call
  until ``resume(endpoint, streams)`` tells it where each stream stands (see ``resume``).

``PublisherActor`` asks for no CPU (it is light and must not queue behind inference workers);
place it on the node whose address the endpoint names.
"""
import fcntl
import logging
import math
import os
import socket
import termios
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import ray
import zmq
import zmq.utils.monitor
from zmq.auth.thread import ThreadAuthenticator

from models.errors import PublisherError
from workers.frames import fetch_frames

from .config import OutputSection, PublishSection
from .images import encode_jpeg
from .keys import load_server_keys
from .protocol import EndOfStream, FrameRecord, check_stream_id, encode_message, topic
from .sinks import StreamSinks
from .sources import FALLBACK_FPS
from .tracking import TrackingConfig, TrackingStage
from .zones import ZoneConfig, ZoneStage

LATENCY_SAMPLES = 10_000  # per stage and stream: recent enough, bounded memory
SEND_RETRY_S = 0.005      # offline, a full subscriber queue is tried again this often
KEEPALIVE_PROBES = 3      # TCP keepalive: unanswered probes, a second apart, before a silent peer is dropped
FLUSH_POLL_S = 0.05       # offline, at the end, how often the subscribers' queues are looked at
EOS_REPEAT_S = 0.05       # live, after a queue was full: how often an EOS goes again while queues drain
EOS_SETTLE_S = 0.5        # ... until the queues are empty, or have not moved this long (the rest are stalled)
BIND_RETRY_S = 10.0       # a restarted publisher tries this long to bind the endpoint its predecessor held

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    """What the publisher keeps per stream."""
    stream_id: str
    sinks: StreamSinks | None
    tracking: TrackingStage | None = None
    zones: ZoneStage | None = None   # with zones that apply to this stream
    zone_counts: dict = field(default_factory=dict)  # the last frame sent's zone_counts
    next_seq: int = 0
    waiting: dict = field(default_factory=dict)  # seq -> (FrameRecord, arrival perf_counter)
    frames: int | None = None  # known once end_stream is called
    ended: bool = False  # EOS sent
    end: tuple[str, str | None] | None = None  # (reason, error) for its EOS, once known
    duplicates: int = 0
    missing: int = 0  # seqs skipped when close() sent frames past a gap
    dropped_before: int = 0
    latency_ms: dict = field(default_factory=dict)  # stage -> deque of samples

    def add_latencies(self, record: FrameRecord) -> None:
        samples = dict(record.timing_ms)
        samples["end_to_end"] = (record.published_at - record.captured_at) * 1e3
        for stage, ms in samples.items():
            self.latency_ms.setdefault(stage, deque(maxlen=LATENCY_SAMPLES)).append(ms)

    def summary(self) -> dict:
        return {"published": self.next_seq - self.missing,
                "line_counts": {} if self.zones is None else self.zones.line_counts(),
                "duplicates_dropped": self.duplicates,
                "last_seq": self.next_seq - 1,
                "waiting": len(self.waiting),
                "dropped_before": self.dropped_before,
                "missing": self.missing,
                "ended": self.ended,
                "latency_ms": {stage: _percentiles(samples)
                               for stage, samples in self.latency_ms.items()}}


def _percentiles(samples: deque) -> dict:
    p50, p95, p99 = np.percentile(np.fromiter(samples, float), [50, 95, 99])
    return {"count": len(samples), "p50": float(p50), "p95": float(p95), "p99": float(p99)}


class Publisher:
    """The publisher's logic; ``PublisherActor`` runs it as a Ray actor (see the module docstring)."""

    def __init__(self, publish: PublishSection, output: OutputSection | None = None,
                 class_names: list[str] | None = None, live: bool = False,
                 tracking: TrackingConfig | None = None, publish_score: float = 0.0,
                 zones: list[ZoneConfig] = ()):
        """``class_names[class_id]``: labels for the COCO files' categories, also those never detected;
        ``live``: never wait for a subscriber; ``tracking``: track ids per stream (None or not
        enabled: none); ``publish_score``: see the module docstring; ``zones``: regions and
        counting lines (pipeline/zones.py), valid ones: ``load_pipeline_config`` checks them
        (``pipeline.zones.validate_zones``; lines need tracking), the publisher does not again."""
        output = output or OutputSection()
        publish.validate("publish")
        output.validate("output")
        self.publish_section, self.output, self.class_names = publish, output, class_names
        self.live = live
        self.tracking = tracking if tracking is not None and tracking.enabled else None
        if self.tracking is not None:
            self.tracking.validate("tracking")
        self.publish_score = publish_score
        self.zones = list(zones)   # validated with the config (PipelineConfig.validate: validate_zones)
        if output.dir:
            _make_out_dir(output.dir)
        self._streams: dict[str, _Stream] = {}
        self._closed = False
        self._delivery_state()
        self._context = zmq.Context()
        self._authenticator = None
        self._socket = self._context.socket(zmq.XPUB)
        self._endpoint = publish.endpoint
        if self._restarted:
            return  # resume() binds the endpoint the crashed publisher had
        try:
            self._bind()
        except Exception:
            self._close_zmq()
            raise

    def _bind(self) -> None:
        config = self.publish_section
        self._socket.sndhwm = config.hwm
        if config.sndbuf:
            self._socket.sndbuf = config.sndbuf
        self._socket.linger = config.linger_ms
        self._socket.setsockopt(zmq.XPUB_VERBOSER, 1)  # every subscription and its end, not only the first
        self._socket.setsockopt(zmq.XPUB_NODROP, 1)
        # A subscriber whose host vanished is disconnected by the kernel after the stall timeout
        # (TCP_MAXRT: data unacknowledged that long; keepalive probes while the line is idle): its
        # queue goes away with it and holds nobody back. Not ZeroMQ's heartbeats: a subscriber
        # behind answers a ping when it reads it, after the publisher may have closed at the end,
        # and the TCP reset that answer gets discards what it had received but not yet read (the
        # stream's last frames; and libzmq asserts "!_io_error" in a subscriber held at its hwm).
        # One alive but not reading is cut off by _cut_off_stalled.
        self._socket.setsockopt(zmq.TCP_MAXRT, int(config.stall_timeout_s * 1000))
        self._socket.setsockopt(zmq.TCP_KEEPALIVE, 1)
        self._socket.setsockopt(zmq.TCP_KEEPALIVE_IDLE, max(1, int(config.stall_timeout_s)))
        self._socket.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 1)
        self._socket.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_PROBES)
        if config.curve_keys:
            public, secret, clients = load_server_keys(config.curve_keys)
            # The authenticator must run before the socket binds, or handshakes skip it.
            self._authenticator = ThreadAuthenticator(self._context)
            self._authenticator.start()
            self._authenticator.configure_curve(domain="*", location=str(clients))
            # Its own key pair may subscribe too: only the publisher holds its secret key, and the
            # view a run starts beside itself (maskstream run --view) connects with it.
            self._authenticator.certs.setdefault("*", {})[public] = True
            self._socket.curve_server = True
            self._socket.curve_publickey = public
            self._socket.curve_secretkey = secret
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        try:
            self._socket.bind(config.endpoint)
        except zmq.ZMQError as error:
            raise PublisherError(f"publish endpoint {config.endpoint}: {error.strerror}") from None
        self._endpoint = self._socket.last_endpoint.decode()

    def ready(self) -> str:
        """The endpoint actually bound (a ``*`` port resolved)."""
        return self._endpoint

    def open_stream(self, stream_id: str, fps: float) -> None:
        """Opens ``stream_id``'s files before its first frame; ``fps``: the source's frame rate."""
        self._check_open()
        self._stream(stream_id, fps)

    def publish(self, record: FrameRecord) -> dict:
        """Takes a record in any order; sends every record whose earlier seqs are all out.
        Returns ``progress()``."""
        self._take(record)
        return self.progress()

    def publish_many(self, records: list[FrameRecord]) -> dict:
        """``publish`` for each record in turn: one actor call for a whole batch's frames.
        Returns ``progress()`` (once, after the last: its notices are not lost in between)."""
        for record in records:
            self._take(record)
        return self.progress()

    def _take(self, record: FrameRecord) -> None:
        arrived = time.perf_counter()
        self._check_open()
        if self._held is not None:
            self._held.append(("publish", (record,)))
            return
        record.check()  # now, not when its turn comes: a bad record must not stall the stream
        stream = self._stream(record.stream)
        seq = int(record.seq)
        if seq < stream.next_seq or seq in stream.waiting:
            stream.duplicates += 1
            return
        if stream.frames is not None and seq >= stream.frames:
            raise PublisherError(f"stream {record.stream}: seq {seq} is past its end "
                                 f"({stream.frames} frames)")
        stream.waiting[seq] = (record, arrived)
        self._send_in_order(stream)

    def end_stream(self, stream_id: str, frames: int, reason: str = "end", error: str | None = None) -> dict:
        """Sends EOS for ``stream_id`` (saying why it ended: ``reason`` and ``error``, see
        ``protocol.EndOfStream``) once its seqs 0..frames-1 are out, then closes its files.
        Returns ``progress()``."""
        self._check_open()
        if self._held is not None:
            self._held.append(("end_stream", (stream_id, frames, reason, error)))
            return self.progress()
        stream = self._stream(stream_id)
        if stream.ended:
            return self.progress()  # sent again after a restart: its EOS already went out
        if frames < stream.next_seq:
            raise PublisherError(f"stream {stream_id}: ended at {frames} frames, "
                                 f"but {stream.next_seq} are already published")
        stream.frames = frames
        stream.end = (reason, error)
        self._send_in_order(stream)
        return self.progress()

    def stats(self) -> dict:
        """Counts and latency percentiles per stream, so far, and the delivery counters."""
        return {"endpoint": self._endpoint,
                "streams": {stream_id: stream.summary() for stream_id, stream in self._streams.items()},
                "delivery": self.delivery()}

    def close(self, reason: str = "stopped", error: str | None = None) -> dict:
        """Sends what is waiting and EOS for every open stream (for ``reason``: the run was
        stopped, or failed with ``error``), closes everything; final stats."""
        if self._closed:
            return self.stats()
        self._covered.update(self._streams)  # what is left goes out to whoever is there: no more waiting
        if self._held is None:
            for stream in self._streams.values():
                for seq in sorted(stream.waiting):
                    stream.missing += seq - stream.next_seq
                    self._send_frame(stream, *stream.waiting.pop(seq))
                if not stream.ended:
                    stream.end = stream.end or (reason, error)
                    self._send_eos(stream)
        if not self.live and self._held is None:
            self._flush()
            # what ZeroMQ itself still queues for a slow subscriber (up to publish.hwm messages,
            # which a subscriber reading 20 a second takes a second or more to take) goes out
            # too: close() lingers for it as long as a stalled subscriber would be waited for
            linger = self.publish_section.linger_ms
            if linger != -1:
                self._socket.linger = max(linger, int(self.publish_section.stall_timeout_s * 1000))
        self._closed = True
        self._close_zmq()
        return self.stats()

    def _check_open(self) -> None:
        if self._closed:
            raise PublisherError(f"publisher on {self._endpoint}: already closed")

    def _stream(self, stream_id: str, source_fps: float | None = None, resume_at: int | None = None,
                tracker=None) -> _Stream:
        """The state of ``stream_id``, opening its file sinks on first sight (at ``resume_at``
        after a restart, its tracker and its zones' state then as they were before that seq:
        ``tracker``, a snapshot pair from ``progress()``, None for fresh ones)."""
        if stream_id not in self._streams:
            check_stream_id(stream_id)
            saved_tracker, saved_lines = tracker if tracker is not None else (None, None)
            tracking = None
            if self.tracking is not None:
                tracking = TrackingStage(self.tracking, self.publish_score, saved_tracker)
            zones = ZoneStage(self.zones, stream_id, saved_lines) or None
            sinks = None
            if self.output.dir:
                overlay_fps = (self.output.overlay_fps or source_fps or FALLBACK_FPS) if self.output.overlay else None
                sinks = StreamSinks(self.output.dir, stream_id, self.class_names, overlay_fps, resume_at,
                                    tracks=self.tracking is not None, zones=zones)
            self._streams[stream_id] = _Stream(stream_id, sinks, tracking, zones, next_seq=resume_at or 0)
        return self._streams[stream_id]

    def _send_in_order(self, stream: _Stream) -> None:
        while stream.next_seq in stream.waiting:
            self._send_frame(stream, *stream.waiting.pop(stream.next_seq))
        if stream.frames is not None and stream.next_seq >= stream.frames and not stream.ended:
            self._send_eos(stream)

    def _send_frame(self, stream: _Stream, record: FrameRecord, arrived: float) -> None:
        if stream.tracking is not None:
            record = stream.tracking.apply(record)
        if stream.zones is not None:
            record = stream.zones.apply(record)
            stream.zone_counts = record.zone_counts or {}
        config = self.publish_section
        images = config.images == "jpeg"
        pixels = _pixels(record) if images or (stream.sinks is not None and stream.sinks.wants_pixels) else None
        image = None
        if images and pixels is not None:  # a record published without pixels goes without
            image = encode_jpeg(pixels, config.jpeg_quality, config.image_max_side)
        sent = replace(record, published_at=time.time(), encoded_image=image,
                       timing_ms={**record.timing_ms, "publish": (time.perf_counter() - arrived) * 1e3})
        self._send(stream, encode_message(sent))
        stream.next_seq = int(sent.seq) + 1
        stream.dropped_before += sent.dropped_before
        stream.add_latencies(sent)
        if stream.sinks is not None:
            stream.sinks.write(sent, pixels)

    def _send_eos(self, stream: _Stream) -> None:
        reason, error = stream.end or ("end", None)
        ended = stream.tracking.alive() if stream.tracking is not None else None
        eos = EndOfStream(stream.stream_id, stream.next_seq, reason, error, ended)
        # Files first: a consumer that sees EOS may read them at once.
        if stream.sinks is not None:
            stream.sinks.close(eos)
        self._send(stream, encode_message(eos), final=True)
        stream.ended = True

    # -- delivery: subscribers, back-pressure, restarts (see the module docstring) ----------------

    def _delivery_state(self) -> None:
        self._incarnation = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._restarted = _reconstructed_actor()
        self._held: list | None = [] if self._restarted else None  # calls waiting for resume()
        self._subscriptions: list[bytes] = []  # topic prefixes subscribed, one entry per subscription
        self._covered: set[str] = set()         # streams whose wait for subscribers is over
        self._wait_deadline: float | None = None
        self._blocked_since: float | None = None  # offline: when sends began to find a full queue
        self._dropping = False                    # offline: gave up waiting for a stalled subscriber
        self._cut_off = False                     # stalled connections cut off during this wait
        self._connections: set[int] = set()       # the file descriptors of the subscribers' connections
        self._monitor = None
        self._events: list[str] = []
        self._counters = {"undelivered": 0, "stalls": 0, "blocked_s": 0.0}
        self._rejoin: tuple[int, float] | None = None  # after a restart: (subscriptions, until when) to wait for

    def progress(self) -> dict:
        """What is out: ``{"incarnation", "resumed", "sent": {stream: first seq not yet sent},
        "ended": [streams whose EOS is out], "events": [one-line notices since the last call],
        "delivery": delivery(), "trackers": {stream: (seq, snapshot)}, "zones": {stream:
        {"zone_counts", "line_counts"}}}``. ``resumed`` is False for a restarted publisher until
        ``resume``. ``trackers`` (with tracking): for each stream, its tracker and its zones'
        state (counting lines, dwell times) as they are before ``seq``, the first seq not yet sent
        (a copy: a few small arrays and dicts); given back to ``resume`` it makes the same ids,
        counts and dwell times from that seq on. ``zones`` (with zones): the last frame sent's
        region counts and each line's totals so far (for the Prometheus metrics)."""
        events, self._events = self._events, []
        # One copy of each stream's zone state per answer: the restart snapshot, and the line totals from it.
        saved = {sid: stream.zones.snapshot() for sid, stream in self._streams.items() if stream.zones is not None}
        trackers = {sid: (stream.next_seq, (stream.tracking.snapshot(), saved.get(sid)))
                    for sid, stream in self._streams.items() if stream.tracking is not None}
        zones = {sid: {"zone_counts": stream.zone_counts, "line_counts": stream.zones.line_counts(saved[sid])}
                 for sid, stream in self._streams.items() if stream.zones is not None}
        return {"incarnation": self._incarnation, "resumed": self._held is None, "trackers": trackers, "zones": zones,
                "sent": {sid: stream.next_seq for sid, stream in self._streams.items()},
                "ended": [sid for sid, stream in self._streams.items() if stream.ended],
                "events": events, "delivery": self.delivery()}

    def delivery(self) -> dict:
        """``{"subscriptions", "undelivered", "stalls", "blocked_s"}``: subscriptions now; live,
        frames that could not be queued for every subscriber; offline, how often a stalled
        subscriber was given up on and the seconds spent waiting for slow ones."""
        self._drain_subscriptions()
        return {"subscriptions": len(self._subscriptions), **self._counters}

    def resume(self, endpoint: str, streams: dict[str, dict], subscriptions: int = 0) -> dict:
        """After a restart: bind ``endpoint`` (the one the crashed publisher had bound) and take
        up each stream where the caller says, ``{stream: {"fps", "next_seq", "tracker"}}`` (``next_seq``:
        the first seq the caller sends again: those not confirmed sent, and those the crashed
        publisher's queues may have held; a consumer drops what it already has; ``tracker``: with
        tracking, the snapshot ``progress()`` gave at that seq, None at seq 0). Its files are
        cut back to that seq. Offline, nothing is sent until the ``subscriptions`` the crashed
        publisher last saw are back (their subscribers reconnect by themselves), or for at most
        stall_timeout_s. Then the calls held since the restart run."""
        if self._held is None:
            return self.progress()
        if not self.live and subscriptions:
            self._rejoin = (subscriptions, time.monotonic() + self.publish_section.stall_timeout_s)
        self._endpoint = endpoint
        self.publish_section = replace(self.publish_section, endpoint=endpoint)
        deadline = time.monotonic() + BIND_RETRY_S
        while True:
            try:
                self._bind()
                break
            except PublisherError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for stream_id, state in streams.items():
            self._stream(stream_id, state.get("fps"), resume_at=state["next_seq"], tracker=state.get("tracker"))
        held, self._held = self._held, None
        self._events.append(f"publisher restarted; resumed {len(streams)} stream(s) on {endpoint}")
        for method, args in held:
            getattr(self, method)(*args)
        return self.progress()

    def _drain_subscriptions(self) -> None:
        """Take in the subscriptions and their ends that the XPUB socket has seen."""
        if self._held is not None or self._closed:
            return
        while self._monitor.poll(0):
            event = zmq.utils.monitor.parse_monitor_message(self._monitor.recv_multipart())
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._connections.add(event["value"])
            else:
                self._connections.discard(event["value"])
        while True:
            try:
                message = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01":
                self._subscriptions.append(message[1:])
            elif message[:1] == b"\x00" and message[1:] in self._subscriptions:
                self._subscriptions.remove(message[1:])
                if self._dropping:  # a subscriber left: perhaps the stalled one; wait for slow ones again
                    self._dropping = False
                    self._socket.setsockopt(zmq.XPUB_NODROP, 1)

    def _subscribers_of(self, stream_id: str) -> int:
        """How many subscriptions cover ``stream_id``'s topic."""
        name = topic(stream_id)
        return sum(1 for prefix in self._subscriptions if name.startswith(prefix))

    def _await_subscribers(self, stream: _Stream) -> None:
        """Hold ``stream``'s first message until publish.wait_subscribers cover it (see the module doc)."""
        wanted = self.publish_section.wait_subscribers
        if not wanted or stream.stream_id in self._covered:
            return
        if self._wait_deadline is None:
            self._wait_deadline = time.monotonic() + self.publish_section.wait_timeout_s
        while True:
            self._drain_subscriptions()
            count = self._subscribers_of(stream.stream_id)
            if count >= wanted:
                self._covered.add(stream.stream_id)
                return
            left = self._wait_deadline - time.monotonic()
            if left <= 0:
                raise PublisherError(f"waited {self.publish_section.wait_timeout_s:g} s for {wanted} subscriber(s) "
                                     f"of stream {stream.stream_id} on {self._endpoint}: {count} came")
            self._socket.poll(min(left, 0.1) * 1000, zmq.POLLIN)

    def _await_rejoin(self) -> None:
        """After a restart, offline: wait for the subscribers the crashed publisher had."""
        wanted, deadline = self._rejoin
        while len(self._subscriptions) < wanted and time.monotonic() < deadline:
            self._socket.poll(100, zmq.POLLIN)
            self._drain_subscriptions()
        if len(self._subscriptions) < wanted:
            self._events.append(f"after the restart {len(self._subscriptions)} of {wanted} subscription(s) came back "
                                f"within {self.publish_section.stall_timeout_s:g} s; going on")
        self._rejoin = None

    def _send(self, stream: _Stream, parts: list[bytes], final: bool = False) -> None:
        """Send one message: offline waiting while a subscriber's queue is full; live never, except
        for a stream's ``final`` message (its EOS), which waits up to stall_timeout_s for a full
        queue to make room, so that a subscriber that is only behind still learns the stream ended."""
        if self._rejoin is not None:
            self._await_rejoin()
        self._await_subscribers(stream)
        if self.live:
            self._send_live(parts, self.publish_section.stall_timeout_s if final else 0.0)
            if final and self._counters["undelivered"]:
                self._repeat_while_draining(parts)
            return
        while True:
            try:
                self._socket.send_multipart(parts, zmq.NOBLOCK)
                break
            except zmq.Again:
                pass
            now = time.monotonic()
            if self._blocked_since is None:
                self._blocked_since = now
            elif now - self._blocked_since >= self.publish_section.stall_timeout_s:
                if self._cut_off or not self._cut_off_stalled():
                    self._give_up_on_stalled()
                self._blocked_since = time.monotonic()
                continue
            self._drain_subscriptions()
            time.sleep(SEND_RETRY_S)
        if self._blocked_since is not None:
            self._counters["blocked_s"] += time.monotonic() - self._blocked_since
            self._blocked_since = None
        self._cut_off = False

    def _send_live(self, parts: list[bytes], wait_s: float, repeat: bool = False) -> None:
        """Live: send now, waiting up to wait_s while a subscriber's queue is full; then to the
        others (that one misses it: counted as undelivered, unless this is a ``repeat``)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self._socket.send_multipart(parts, zmq.NOBLOCK)
                return
            except zmq.Again:
                if time.monotonic() >= deadline:
                    break
                time.sleep(SEND_RETRY_S)
        if not repeat:
            self._counters["undelivered"] += 1
        self._socket.setsockopt(zmq.XPUB_NODROP, 0)
        self._socket.send_multipart(parts)
        self._socket.setsockopt(zmq.XPUB_NODROP, 1)

    def _repeat_while_draining(self, parts: list[bytes]) -> None:
        """Live, a stream's EOS after some subscriber's queue was full: ZeroMQ leaves a subscriber
        out of every send from the one its full queue missed until it has taken half that queue
        (publish.hwm), so an EOS sent meanwhile never reaches it, however soon it would have read
        it. The EOS goes again every EOS_REPEAT_S while the subscribers' connections still empty
        out, up to stall_timeout_s: until they are empty or have not moved for EOS_SETTLE_S (who
        still holds bytes then is not reading). A subscriber that has it drops the repeats."""
        for _ in self._draining(EOS_REPEAT_S, EOS_SETTLE_S, self.publish_section.stall_timeout_s):
            self._send_live(parts, 0.0, repeat=True)

    def _flush(self) -> None:
        """Offline, before closing: wait while the subscribers still take what was sent (their
        connections' kernel queues empty out), up to stall_timeout_s without progress; then the
        socket lingers up to stall_timeout_s (or publish.linger_ms if longer) for what ZeroMQ
        itself still holds."""
        for _ in self._draining(FLUSH_POLL_S, self.publish_section.stall_timeout_s):
            pass

    def _draining(self, poll_s: float, settle_s: float, limit_s: float = math.inf):
        """Yields every poll_s while the subscribers' connections still empty out (their kernel
        send queues): until they are found empty twice in a row, have not moved for settle_s, or
        limit_s has passed."""
        start = progress_at = time.monotonic()
        last, empty = None, 0
        while time.monotonic() - start < limit_s:
            self._drain_subscriptions()
            unsent = sum(_unsent_bytes(fd) for fd in self._connections)
            empty = empty + 1 if unsent == 0 else 0
            if unsent != last:
                last, progress_at = unsent, time.monotonic()
            if empty >= 2 or time.monotonic() - progress_at >= settle_s:
                return
            yield
            time.sleep(poll_s)

    def _cut_off_stalled(self) -> bool:
        """Disconnect the subscribers that took nothing for stall_timeout_s: the connections with
        bytes still waiting in their kernel send queue. True if there were any."""
        self._drain_subscriptions()
        stalled = [fd for fd in self._connections if _unsent_bytes(fd) > 0]
        for fd in stalled:
            connection = socket.socket(fileno=fd)
            try:
                connection.shutdown(socket.SHUT_RDWR)  # ZeroMQ sees the end and drops its queue
            finally:
                connection.detach()  # the descriptor stays ZeroMQ's
        if stalled:
            self._cut_off = True
            self._counters["stalls"] += len(stalled)
            message = (f"{len(stalled)} subscriber(s) on {self._endpoint} took nothing for "
                       f"{self.publish_section.stall_timeout_s:g} s: disconnected (frames go on to the others)")
            self._events.append(message)
            log.warning("%s", message)
        return bool(stalled)

    def _give_up_on_stalled(self) -> None:
        """A subscriber took nothing for stall_timeout_s: send on, ZeroMQ dropping for its full queue."""
        self._dropping = True
        self._counters["stalls"] += 1
        self._socket.setsockopt(zmq.XPUB_NODROP, 0)
        message = (f"a subscriber on {self._endpoint} took nothing for {self.publish_section.stall_timeout_s:g} s: "
                   f"no longer waiting for it (it misses frames until a subscriber leaves)")
        self._events.append(message)
        log.warning("%s", message)

    def _close_zmq(self) -> None:
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
        self._socket.close()
        if self._authenticator is not None:
            self._authenticator.stop()
        self._context.term()


def _unsent_bytes(fd: int) -> int:
    """Bytes waiting in a connection's kernel send queue; 0 if it cannot be told."""
    try:
        return int.from_bytes(fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"), "little", signed=True)
    except OSError:
        return 0


def _reconstructed_actor() -> bool:
    """Whether this runs in an actor that Ray restarted after a crash."""
    if not ray.is_initialized():
        return False
    context = ray.get_runtime_context()
    return context.get_actor_id() is not None and context.was_current_actor_reconstructed


def _make_out_dir(out_dir: str) -> None:
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PublisherError(f"output directory {out_dir}: {error.strerror}") from None


def _pixels(record: FrameRecord) -> np.ndarray | None:
    """The frame's pixels from the object store, if the record refers to them."""
    return fetch_frames([record.pixels])[0] if record.pixels is not None else None


PublisherActor = ray.remote(num_cpus=0)(Publisher)

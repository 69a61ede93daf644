"""The consumer SDK: receive a publisher's frames as records with numpy masks.

    from pipeline.consumer import Consumer

    with Consumer("tcp://127.0.0.1:5555", streams=["cam1"], timeout=10) as consumer:
        for frame in consumer:              # ends after every named stream's EOS, or 10 s idle
            print(frame.stream, frame.seq, [inst.label for inst in frame.instances])
            masks = frame.masks             # (N, height, width) bool, decoded by pycocotools

Frames are `pipeline.protocol.FrameRecord`s (instances: `InstanceRecord`s, whose `mask` is the
decoded (height, width) bool array); a stream's end is an `EndOfStream`, which says why it ended.

A frame's ``image`` is its pixels, (h, w, 3) uint8 RGB, when the publisher sends images
(``publish.images: jpeg``), else None; the masks keep the frame's own size either way.

Without ``streams`` it subscribes to every stream and ends once every stream it has seen has
sent EOS. A consumer that connects late starts at the next frame published, unless the
publisher waits for it (``--wait-subscribers``).

Exactly once, or said: per stream, a frame whose ``seq`` was already received (a publisher that
restarted resends what it had not confirmed) is dropped and counted (``duplicates``); a ``seq``
that never came (the consumer joined late, fell behind a live publisher's queue, or the stream
ended before it) is a `Gap`, which ``messages()`` yields in its place and which is kept in
``gaps`` and logged as a warning for those who iterate over frames only. A message that is not
a well-formed v1 message (wrong parts, not UTF-8 JSON, an unknown schema, a field of the wrong
type, a mask that does not decode to the frame's size, an absurd size) is skipped, counted
(``malformed``) and logged once; a message larger than ``max_message_bytes`` never reaches
memory: ZeroMQ drops the connection that sends it, and the consumer connects again (counted in
``reconnects``, logged once; what was sent meanwhile shows as a gap).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.utils.monitor

from models.errors import ConsumerError, ProtocolError

from .keys import load_client_keys
from .protocol import TOPIC_ROOT, EndOfStream, FrameRecord, decode_message, topic

log = logging.getLogger(__name__)
gap_log = logging.getLogger(__name__ + ".gaps")  # a caller that shows Gap events itself can quiet this one

MAX_MESSAGE_BYTES = 256 << 20   # per message part: a header or an image of a 16384 x 8192 frame fits
RECONNECT_CHECK_S = 1.0         # a dropped connection ZeroMQ has not retried by then is made again here


@dataclass(frozen=True)
class Gap:
    """Frames ``first``..``last`` (seq, inclusive) of ``stream`` that this consumer never received,
    and why it thinks so: ``before joining`` (the stream was already running), ``not received``
    (a later seq came first) or ``before the end`` (the stream's EOS counts more frames)."""
    stream: str
    first: int
    last: int
    reason: str

    @property
    def frames(self) -> int:
        return self.last - self.first + 1

    def describe(self) -> str:
        return f"{self.stream}: {self.frames} frame(s) never received, seq {self.first}-{self.last} ({self.reason})"


class Consumer:
    """A ZeroMQ subscriber to one, several or all streams of a publisher.

    ``curve_keys``: a consumer key directory (see ``pipeline.keys``) for an encrypted publisher,
    or its keys themselves (public, secret, the publisher's public key).
    ``timeout``: iteration ends after this many seconds without a message (None: wait on).
    ``max_message_bytes``: the largest message part accepted (see the module docstring).
    ``hwm``: messages queued in this process before the publisher waits (offline) or drops (live).
    ``on_event``: called with ``(event, value)`` for every event of the subscriber's connection
    (``zmq.EVENT_*``: connecting, CURVE handshakes, disconnections), from the thread that calls
    ``receive``; a viewer turns them into a status line.
    """

    def __init__(self, endpoint: str, streams: list[str] | None = None,
                 curve_keys: str | Path | tuple[bytes, bytes, bytes] | None = None, timeout: float | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, hwm: int = 1000,
                 on_event: Callable[[int, int], None] | None = None):
        self.endpoint = endpoint
        self.streams = set(streams) if streams else None
        self.timeout = timeout
        self.ended: dict[str, EndOfStream] = {}  # stream -> its EOS
        self.seen: set[str] = set()  # streams with a frame or EOS received
        self.gaps: list[Gap] = []
        self.duplicates = 0          # frames received again, dropped (an EOS again is dropped uncounted)
        self.malformed = 0           # messages skipped as not v1
        self.reconnects = 0          # connections dropped under it (an oversized message) and made again
        self._next_seq: dict[str, int] = {}  # stream -> the seq expected next
        self._ready: deque = deque()  # messages decided on, not yet returned (a gap before its frame)
        self._options = {"linger": 0, "maxmsgsize": max_message_bytes, "rcvhwm": hwm}
        self._curve_keys = curve_keys
        self._lost_at: float | None = None  # when the connection dropped, while ZeroMQ has not retried it
        self._context = zmq.Context()
        self._socket = self._monitor = None
        self._on_event = on_event
        try:
            self._connect(curve_keys)
        except Exception:
            self.close()
            raise

    def _connect(self, curve_keys: str | Path | tuple[bytes, bytes, bytes] | None) -> None:
        self._socket = self._context.socket(zmq.SUB)
        for name, value in self._options.items():
            setattr(self._socket, name, value)
        # ZeroMQ does not reconnect after a protocol error (a message beyond maxmsgsize): watch for it.
        self._monitor = self._socket.get_monitor_socket(
            zmq.EVENT_ALL if self._on_event is not None
            else zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        if curve_keys is not None:
            public, secret, server_public = (curve_keys if isinstance(curve_keys, tuple)
                                             else load_client_keys(curve_keys))
            self._socket.curve_publickey = public
            self._socket.curve_secretkey = secret
            self._socket.curve_serverkey = server_public
        prefixes = ([topic(stream) for stream in sorted(self.streams)] if self.streams
                    else [TOPIC_ROOT.encode()])
        for prefix in prefixes:
            self._socket.subscribe(prefix)
        try:
            self._socket.connect(self.endpoint)
        except zmq.ZMQError as error:
            raise ConsumerError(f"consumer endpoint {self.endpoint}: {error.strerror}") from None

    @property
    def finished(self) -> bool:
        """Whether every expected stream (the named ones, else every one seen) has ended."""
        expected = self.streams if self.streams is not None else self.seen
        return bool(expected) and expected <= set(self.ended)

    def receive(self, timeout: float | None = None) -> FrameRecord | EndOfStream | Gap | None:
        """The next frame, EOS or gap, or None if none came within ``timeout`` seconds (None:
        wait on). Duplicates and malformed messages are counted and passed over."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._lost_at is not None:
                left = RECONNECT_CHECK_S if left is None else min(left, RECONNECT_CHECK_S)
            ready = dict(self._poller.poll(None if left is None else int(left * 1000)))
            if self._monitor in ready or self._lost_at is not None:
                self._watch_connection()
            if self._socket in ready:
                self._accept(self._receive_parts())
            elif not ready and deadline is not None and time.monotonic() >= deadline:
                return None
        return self._ready.popleft()

    def _watch_connection(self) -> None:
        """Follow the connection's events; one dropped and not retried by ZeroMQ within
        RECONNECT_CHECK_S (after a message beyond max_message_bytes) is made again on a new socket."""
        while self._monitor.poll(0):
            parsed = zmq.utils.monitor.parse_monitor_message(self._monitor.recv_multipart())
            event = parsed["event"]
            if self._on_event is not None:
                self._on_event(int(event), int(parsed["value"]))
            if event == zmq.EVENT_DISCONNECTED:
                self._lost_at = time.monotonic()
            elif event in (zmq.EVENT_CONNECTED, zmq.EVENT_CONNECT_RETRIED):
                self._lost_at = None
        if self._lost_at is None or time.monotonic() - self._lost_at < RECONNECT_CHECK_S:
            return
        self._lost_at = None
        self.reconnects += 1
        if self.reconnects == 1:
            log.warning("%s: the connection dropped and ZeroMQ did not retry it (a message beyond "
                        "max_message_bytes?); connecting again", self.endpoint)
        while self._socket.poll(0):  # the messages already here are not lost with the old socket
            self._accept(self._receive_parts())
        self._close_socket()
        self._connect(self._curve_keys)

    def _receive_parts(self) -> list[bytes]:
        """The next multipart message as it came off the socket."""
        return self._socket.recv_multipart()

    def _accept(self, parts: list[bytes]) -> None:
        """Decide on a received message: queue it (and the gap before it), or count it away."""
        try:
            message = decode_message(parts)
        except ProtocolError as error:
            self.malformed += 1
            if self.malformed == 1:
                log.warning("%s: skipped a malformed message (%s); more are counted, not shown", self.endpoint, error)
            return
        stream = message.stream
        if self.streams is not None and stream not in self.streams:
            return  # a subscription prefix cannot exclude everything (an id ending in '/' is refused)
        self.seen.add(stream)
        expected = self._next_seq.get(stream)
        ended = self.ended.get(stream)
        # After an EOS, a restarted publisher may still resend that run's last frames; a live one
        # repeats the EOS itself (for a subscriber its sends had left out), dropped here uncounted;
        # a frame of seq 0 starts the stream again (a new run).
        if expected is None and ended is not None:
            if message == ended:
                return
            if isinstance(message, FrameRecord) and 0 < message.seq < ended.frames:
                self.duplicates += 1
                return
        if isinstance(message, EndOfStream):
            if message.frames > (expected or 0):
                self._gap(stream, expected or 0, message.frames - 1,
                          "before the end" if expected is not None else "before joining")
            self.ended[stream] = message
            self._next_seq.pop(stream, None)  # a later run may start the stream again from seq 0
        else:
            if expected is not None and message.seq < expected:
                self.duplicates += 1
                return
            if message.seq > (expected or 0):
                self._gap(stream, expected or 0, message.seq - 1,
                          "not received" if expected is not None else "before joining")
            self._next_seq[stream] = message.seq + 1
            self.ended.pop(stream, None)
        self._ready.append(message)

    def _gap(self, stream: str, first: int, last: int, reason: str) -> None:
        gap = Gap(stream, first, last, reason)
        self.gaps.append(gap)
        gap_log.warning("%s", gap.describe())
        self._ready.append(gap)

    def messages(self):
        """Frames, gaps and EOS messages until ``finished`` or ``timeout`` seconds pass without one."""
        while not self.finished or self._ready:
            message = self.receive(self.timeout)
            if message is None:
                return
            yield message

    def __iter__(self):
        """Frames only, with the same ending as ``messages`` (gaps: see ``gaps``)."""
        return (message for message in self.messages() if isinstance(message, FrameRecord))

    def _close_socket(self) -> None:
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
        if self._socket is not None:
            self._socket.close()

    def close(self) -> None:
        self._close_socket()
        self._context.term()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

"""The consumer SDK: receive a publisher's frames as records with numpy masks.

    from pipeline.consumer import Consumer

    with Consumer("tcp://127.0.0.1:5555", streams=["cam1"], timeout=10) as consumer:
        for frame in consumer:              # ends after every named stream's EOS, or 10 s idle
            print(frame.stream, frame.seq, [inst.label for inst in frame.instances])
            masks = frame.masks             # (N, height, width) bool, decoded by pycocotools

Frames are `pipeline.protocol.FrameRecord`s (instances: `InstanceRecord`s, whose `mask` is the
decoded (height, width) bool array); a stream's end is an `EndOfStream`.

A frame's ``image`` is its pixels, (h, w, 3) uint8 RGB, when the publisher sends images
(``publish.images: jpeg``), else None; the masks keep the frame's own size either way.

Without ``streams`` it subscribes to every stream and ends once every stream it has seen has
sent EOS. A consumer that connects late starts at the next frame published; ZeroMQ drops frames
for a consumer that falls behind its high-water mark (the publisher's file sinks are lossless).
"""
from pathlib import Path

import zmq

from models.errors import ConsumerError

from .keys import load_client_keys
from .protocol import TOPIC_ROOT, EndOfStream, FrameRecord, decode_message, topic


class Consumer:
    """A ZeroMQ subscriber to one, several or all streams of a publisher.

    ``curve_keys``: a consumer key directory (see ``pipeline.keys``) for an encrypted publisher,
    or its keys themselves (public, secret, the publisher's public key).
    ``timeout``: iteration ends after this many seconds without a message (None: wait on).
    ``monitor``: also open ``self.monitor``, a socket of the subscriber's connection and
    handshake events (``zmq.utils.monitor``), before connecting, so that none goes unseen;
    ``self.socket`` is the subscriber itself, to poll the two together.
    """

    def __init__(self, endpoint: str, streams: list[str] | None = None,
                 curve_keys: str | Path | tuple[bytes, bytes, bytes] | None = None,
                 timeout: float | None = None, monitor: bool = False):
        self.endpoint = endpoint
        self.streams = set(streams) if streams else None
        self.timeout = timeout
        self.ended: dict[str, int] = {}  # stream -> frames, from its EOS
        self.seen: set[str] = set()  # streams with a frame or EOS received
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.linger = 0
        self.monitor: zmq.Socket | None = None
        try:
            if monitor:
                self.monitor = self._socket.get_monitor_socket()
                self.monitor.linger = 0
            self._connect(curve_keys)
        except Exception:
            self.close()
            raise

    def _connect(self, curve_keys: str | Path | tuple[bytes, bytes, bytes] | None) -> None:
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
    def socket(self) -> zmq.Socket:
        """The SUB socket (to poll it beside ``monitor``; read messages with ``receive``)."""
        return self._socket

    @property
    def finished(self) -> bool:
        """Whether every expected stream (the named ones, else every one seen) has ended."""
        expected = self.streams if self.streams is not None else self.seen
        return bool(expected) and expected <= set(self.ended)

    def receive(self, timeout: float | None = None) -> FrameRecord | EndOfStream | None:
        """The next message, or None if none came within ``timeout`` seconds (None: wait on)."""
        if not self._socket.poll(None if timeout is None else int(timeout * 1000)):
            return None
        message = decode_message(self._receive_parts())
        self.seen.add(message.stream)
        if isinstance(message, EndOfStream):
            self.ended[message.stream] = message.frames
        return message

    def _receive_parts(self) -> list[bytes]:
        """The next multipart message as it came off the socket."""
        return self._socket.recv_multipart()

    def messages(self):
        """Frames and EOS messages until ``finished`` or ``timeout`` seconds pass without one."""
        while not self.finished:
            message = self.receive(self.timeout)
            if message is None:
                return
            yield message

    def __iter__(self):
        """Frames only, with the same ending as ``messages``."""
        return (message for message in self.messages() if isinstance(message, FrameRecord))

    def close(self) -> None:
        if self.monitor is not None:
            self._socket.disable_monitor()
            self.monitor.close()
        self._socket.close()
        self._context.term()

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

"""The consumer SDK: receive a publisher's frames as objects with numpy masks.

    from pipeline.consumer import Consumer

    with Consumer("tcp://127.0.0.1:5555", streams=["cam1"], timeout=10) as consumer:
        for frame in consumer:              # ends after every named stream's EOS, or 10 s idle
            print(frame.stream, frame.seq, [inst.label for inst in frame.instances])
            masks = frame.masks             # (N, height, width) bool, decoded by pycocotools

Without ``streams`` it subscribes to every stream and ends once every stream it has seen has
sent EOS. A consumer that connects late starts at the next frame published; ZeroMQ drops frames
for a consumer that falls behind its high-water mark (the publisher's file sinks are lossless).
"""
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import zmq
from pycocotools import mask as mask_utils

from models.errors import ConsumerError

from .keys import load_client_keys
from .protocol import TOPIC_ROOT, decode_message, is_eos, topic


@dataclass(frozen=True)
class Instance:
    """One detected instance; ``box`` is (x1, y1, x2, y2) in pixels, ``rle`` COCO compressed RLE."""
    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]
    rle: dict = field(repr=False)

    @property
    def mask(self) -> np.ndarray:
        """(height, width) bool, decoded on each access."""
        return mask_utils.decode(self.rle).astype(bool)


@dataclass(frozen=True)
class Frame:
    """One published frame; ``header`` is the wire header as received."""
    stream: str
    seq: int
    frame_index: int
    pts: float
    captured_at: float
    published_at: float
    width: int
    height: int
    dropped_before: int
    timing_ms: dict
    instances: tuple[Instance, ...]
    header: dict = field(repr=False)

    @classmethod
    def from_header(cls, header: dict) -> "Frame":
        instances = tuple(Instance(inst["class_id"], inst["label"], inst["score"],
                                   tuple(inst["box"]), inst["mask"])
                          for inst in header["instances"])
        values = {name: header[name] for name in
                  ("stream", "seq", "frame_index", "pts", "captured_at", "published_at",
                   "width", "height", "dropped_before", "timing_ms")}
        return cls(**values, instances=instances, header=header)

    @cached_property
    def masks(self) -> np.ndarray:
        """(N, height, width) bool masks of the instances, decoded once."""
        if not self.instances:
            return np.zeros((0, self.height, self.width), bool)
        decoded = mask_utils.decode([inst.rle for inst in self.instances])  # (H, W, N)
        return np.moveaxis(decoded, -1, 0).astype(bool)


@dataclass(frozen=True)
class EndOfStream:
    """A stream's end: it published ``frames`` frames, seq 0..frames-1."""
    stream: str
    frames: int


class Consumer:
    """A ZeroMQ subscriber to one, several or all streams of a publisher.

    ``curve_keys``: a consumer key directory (see ``pipeline.keys``) for an encrypted publisher.
    ``timeout``: iteration ends after this many seconds without a message (None: wait on).
    """

    def __init__(self, endpoint: str, streams: list[str] | None = None,
                 curve_keys: str | Path | None = None, timeout: float | None = None):
        self.endpoint = endpoint
        self.streams = set(streams) if streams else None
        self.timeout = timeout
        self.ended: dict[str, int] = {}  # stream -> frames, from its EOS
        self.seen: set[str] = set()  # streams with a frame or EOS received
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.linger = 0
        try:
            self._connect(curve_keys)
        except Exception:
            self.close()
            raise

    def _connect(self, curve_keys: str | Path | None) -> None:
        if curve_keys is not None:
            public, secret, server_public = load_client_keys(curve_keys)
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

    def receive(self, timeout: float | None = None) -> Frame | EndOfStream | None:
        """The next message, or None if none came within ``timeout`` seconds (None: wait on)."""
        if not self._socket.poll(None if timeout is None else int(timeout * 1000)):
            return None
        header = decode_message(self._socket.recv_multipart())
        self.seen.add(header["stream"])
        if is_eos(header):
            self.ended[header["stream"]] = header["frames"]
            return EndOfStream(header["stream"], header["frames"])
        return Frame.from_header(header)

    def messages(self):
        """Frames and EOS messages until ``finished`` or ``timeout`` seconds pass without one."""
        while not self.finished:
            message = self.receive(self.timeout)
            if message is None:
                return
            yield message

    def __iter__(self):
        """Frames only, with the same ending as ``messages``."""
        return (message for message in self.messages() if isinstance(message, Frame))

    def close(self) -> None:
        self._socket.close()
        self._context.term()

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

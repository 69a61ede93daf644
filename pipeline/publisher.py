"""The publisher: each stream's frames back in ``seq`` order, out over ZeroMQ and into file sinks.

Interface with the pipeline core::

    publisher = PublisherActor.options(...).remote(PublisherConfig(...))  # or a dict of its fields
    endpoint = ray.get(publisher.ready.remote())  # the bound endpoint; bind and key errors show here
    publisher.publish.remote(record)              # any order; sent in seq order per stream
    publisher.publish_many.remote([record, ...])  # the same for a batch's records, in one call
    publisher.end_stream.remote(stream_id, frames)
    ray.get(publisher.stats.remote())             # during the run
    ray.get(publisher.close.remote())             # at the end or on Ctrl-C; returns the final stats

``record`` is a dict: ``stream, seq, frame_index, pts, captured_at, width, height,
dropped_before, timing_ms`` ({stage: ms}) and ``instances`` (``[{class_id, label, score, box:
[x1, y1, x2, y2], mask: {size: [h, w], counts: str}}]``), plus ``frame_ref``: ``(ObjectRef, index)``,
frame ``index`` of an object-store array of RGB uint8 (n, H, W, 3) pixels, when the overlay video
is on (inside a record Ray passes the reference on instead of resolving it).

- ``seq`` must run 0, 1, 2, ... per stream: a missing seq holds back later frames until it
  arrives (or until ``close``, which sends what is waiting). A seq seen before (a batch retried
  after a worker died) is dropped and counted.
- Each sent header gets ``published_at`` and ``timing_ms["publish"]``: milliseconds from the
  record's arrival here to its sending, which includes waiting for earlier seqs.
- ``end_stream(stream_id, frames)``: once seqs 0..frames-1 are out, closes that stream's files
  and sends EOS. ``close()`` sends what is waiting, EOS for every stream not yet ended, closes
  the socket and files, and returns ``stats()``.
- ``stats()``: ``{"endpoint", "streams": {id: {published, duplicates_dropped, last_seq, waiting,
  dropped_before, missing, ended, latency_ms: {stage: {count, p50, p95, p99}}}}}``, where the
  stages are the records' ``timing_ms`` stages, ``publish`` and ``end_to_end`` (capture to publish).

``PublisherActor`` asks for no CPU (it is light and must not queue behind inference workers);
place it on the node whose address the endpoint names.
"""
import dataclasses
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import zmq
from zmq.auth.thread import ThreadAuthenticator

from models.errors import PublisherError

from .ingest import fetch_frames
from .keys import load_server_keys
from .protocol import check_record, check_stream_id, encode_message, eos_header, frame_header
from .sinks import StreamSinks

LATENCY_SAMPLES = 10_000  # per stage and stream: recent enough, bounded memory


@dataclass
class PublisherConfig:
    """Where and how to publish.

    ``hwm``: ZeroMQ's send high-water mark, in messages per subscriber (0: no limit); a
    subscriber that falls further behind loses messages, the file sinks do not.
    ``curve_keys``: the publisher's key directory (see ``pipeline.keys``), None for plain TCP.
    ``out_dir``: where the file sinks write (see ``pipeline.sinks``), None for none.
    ``class_names[class_id]``: labels for the COCO categories, also those never detected.
    """
    endpoint: str = "tcp://127.0.0.1:5555"
    hwm: int = 1000
    curve_keys: str | None = None
    out_dir: str | None = None
    overlay_video: bool = False
    overlay_fps: float = 25.0
    class_names: list[str] | None = None
    linger_ms: int = 1000

    @classmethod
    def from_value(cls, config: "PublisherConfig | Mapping") -> "PublisherConfig":
        """A config from itself or a mapping of its fields, checked."""
        if isinstance(config, Mapping):
            unknown = sorted(set(config) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise PublisherError(f"publisher config: unknown key(s) {', '.join(unknown)}")
            config = cls(**config)
        if config.overlay_video and not config.out_dir:
            raise PublisherError("publisher config: overlay_video needs out_dir")
        if config.hwm < 0:
            raise PublisherError(f"publisher config: hwm {config.hwm} must be >= 0")
        return config


@dataclass
class _Stream:
    """What the publisher keeps per stream."""
    stream_id: str
    sinks: StreamSinks | None
    next_seq: int = 0
    waiting: dict = field(default_factory=dict)  # seq -> (record, arrival perf_counter)
    frames: int | None = None  # known once end_stream is called
    ended: bool = False  # EOS sent
    duplicates: int = 0
    missing: int = 0  # seqs skipped when close() sent frames past a gap
    dropped_before: int = 0
    latency_ms: dict = field(default_factory=dict)  # stage -> deque of samples

    def add_latencies(self, header: dict) -> None:
        samples = dict(header["timing_ms"])
        samples["end_to_end"] = (header["published_at"] - header["captured_at"]) * 1e3
        for stage, ms in samples.items():
            self.latency_ms.setdefault(stage, deque(maxlen=LATENCY_SAMPLES)).append(ms)

    def summary(self) -> dict:
        return {"published": self.next_seq - self.missing,
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

    def __init__(self, config: "PublisherConfig | Mapping"):
        self.config = PublisherConfig.from_value(config)
        if self.config.out_dir:
            _make_out_dir(self.config.out_dir)
        self._context = zmq.Context()
        self._authenticator = None
        self._socket = self._context.socket(zmq.PUB)
        try:
            self._bind()
        except Exception:
            self._close_zmq()
            raise
        self._streams: dict[str, _Stream] = {}
        self._closed = False

    def _bind(self) -> None:
        self._socket.sndhwm = self.config.hwm
        self._socket.linger = self.config.linger_ms
        if self.config.curve_keys:
            public, secret, clients = load_server_keys(self.config.curve_keys)
            # The authenticator must run before the socket binds, or handshakes skip it.
            self._authenticator = ThreadAuthenticator(self._context)
            self._authenticator.start()
            self._authenticator.configure_curve(domain="*", location=str(clients))
            self._socket.curve_server = True
            self._socket.curve_publickey = public
            self._socket.curve_secretkey = secret
        try:
            self._socket.bind(self.config.endpoint)
        except zmq.ZMQError as error:
            raise PublisherError(f"publish endpoint {self.config.endpoint}: {error.strerror}") from None
        self._endpoint = self._socket.last_endpoint.decode()

    def ready(self) -> str:
        """The endpoint actually bound (a ``*`` port resolved)."""
        return self._endpoint

    def publish(self, record: dict) -> None:
        """Takes a record in any order; sends every record whose earlier seqs are all out."""
        arrived = time.perf_counter()
        self._check_open()
        check_record(record)  # now, not when its turn comes: a bad record must not stall the stream
        stream = self._stream(record["stream"])
        seq = int(record["seq"])
        if seq < stream.next_seq or seq in stream.waiting:
            stream.duplicates += 1
            return
        if stream.frames is not None and seq >= stream.frames:
            raise PublisherError(f"stream {record['stream']}: seq {seq} is past its end "
                                 f"({stream.frames} frames)")
        stream.waiting[seq] = (record, arrived)
        self._send_in_order(stream)

    def publish_many(self, records: list[dict]) -> None:
        """``publish`` for each record in turn: one actor call for a whole batch's frames."""
        for record in records:
            self.publish(record)

    def end_stream(self, stream_id: str, frames: int) -> None:
        """Sends EOS for ``stream_id`` once its seqs 0..frames-1 are out, then closes its files."""
        self._check_open()
        stream = self._stream(stream_id)
        if frames < stream.next_seq:
            raise PublisherError(f"stream {stream_id}: ended at {frames} frames, "
                                 f"but {stream.next_seq} are already published")
        stream.frames = frames
        self._send_in_order(stream)

    def stats(self) -> dict:
        """Counts and latency percentiles per stream, so far."""
        return {"endpoint": self._endpoint,
                "streams": {stream_id: stream.summary() for stream_id, stream in self._streams.items()}}

    def close(self) -> dict:
        """Sends what is waiting and EOS for every open stream, closes everything; final stats."""
        if self._closed:
            return self.stats()
        for stream in self._streams.values():
            for seq in sorted(stream.waiting):
                stream.missing += seq - stream.next_seq
                self._send_frame(stream, *stream.waiting.pop(seq))
            if not stream.ended:
                self._send_eos(stream)
        self._closed = True
        self._close_zmq()
        return self.stats()

    def _check_open(self) -> None:
        if self._closed:
            raise PublisherError(f"publisher on {self._endpoint}: already closed")

    def _stream(self, stream_id: str) -> _Stream:
        """The state of ``stream_id``, opening its file sinks on first sight."""
        if stream_id not in self._streams:
            check_stream_id(stream_id)
            sinks = None
            if self.config.out_dir:
                sinks = StreamSinks(self.config.out_dir, stream_id, self.config.class_names,
                                    self.config.overlay_fps if self.config.overlay_video else None)
            self._streams[stream_id] = _Stream(stream_id, sinks)
        return self._streams[stream_id]

    def _send_in_order(self, stream: _Stream) -> None:
        while stream.next_seq in stream.waiting:
            self._send_frame(stream, *stream.waiting.pop(stream.next_seq))
        if stream.frames is not None and stream.next_seq >= stream.frames and not stream.ended:
            self._send_eos(stream)

    def _send_frame(self, stream: _Stream, record: dict, arrived: float) -> None:
        timing_ms = {**record["timing_ms"], "publish": (time.perf_counter() - arrived) * 1e3}
        header = frame_header({**record, "timing_ms": timing_ms}, published_at=time.time())
        self._socket.send_multipart(encode_message(header))
        stream.next_seq = header["seq"] + 1
        stream.dropped_before += header["dropped_before"]
        stream.add_latencies(header)
        if stream.sinks is not None:
            stream.sinks.write(header, _pixels(record) if stream.sinks.wants_pixels else None)

    def _send_eos(self, stream: _Stream) -> None:
        # Files first: a consumer that sees EOS may read them at once.
        if stream.sinks is not None:
            stream.sinks.close()
        self._socket.send_multipart(encode_message(eos_header(stream.stream_id, stream.next_seq)))
        stream.ended = True

    def _close_zmq(self) -> None:
        self._socket.close()
        if self._authenticator is not None:
            self._authenticator.stop()
        self._context.term()


def _make_out_dir(out_dir: str) -> None:
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PublisherError(f"output directory {out_dir}: {error.strerror}") from None


def _pixels(record: dict) -> np.ndarray | None:
    """The frame's pixels from the object store, if the record refers to them."""
    frame_ref = record.get("frame_ref")
    return fetch_frames([frame_ref])[0] if frame_ref else None


PublisherActor = ray.remote(num_cpus=0)(Publisher)

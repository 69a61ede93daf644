"""The publisher: each stream's frames back in ``seq`` order, out over ZeroMQ and into file sinks.

Interface with the pipeline core::

    publisher = PublisherActor.options(...).remote(PublishSection(...), OutputSection(...), class_names,
                                                   TrackingConfig(...), publish_score)
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
  continuing a track); EOS carries the tracks still alive. A publisher started again starts
  its trackers afresh: give it ``first_track_id`` above the ids already sent to keep them unique.
- ``stats()``: ``{"endpoint", "streams": {id: {published, duplicates_dropped, last_seq, waiting,
  dropped_before, missing, ended, latency_ms: {stage: {count, p50, p95, p99}}}}}``, where the
  stages are the records' ``timing_ms`` stages, ``publish`` and ``end_to_end`` (capture to publish).

``PublisherActor`` asks for no CPU (it is light and must not queue behind inference workers);
place it on the node whose address the endpoint names.
"""
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import ray
import zmq
from zmq.auth.thread import ThreadAuthenticator

from models.errors import PublisherError
from workers.frames import fetch_frames

from .config import OutputSection, PublishSection
from .images import encode_jpeg
from .keys import load_server_keys
from .protocol import EndOfStream, FrameRecord, check_stream_id, encode_message
from .sinks import StreamSinks
from .sources import FALLBACK_FPS
from .tracking import TrackingConfig, TrackingStage

LATENCY_SAMPLES = 10_000  # per stage and stream: recent enough, bounded memory


@dataclass
class _Stream:
    """What the publisher keeps per stream."""
    stream_id: str
    sinks: StreamSinks | None
    tracking: TrackingStage | None = None
    next_seq: int = 0
    waiting: dict = field(default_factory=dict)  # seq -> (FrameRecord, arrival perf_counter)
    frames: int | None = None  # known once end_stream is called
    ended: bool = False  # EOS sent
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
                 class_names: list[str] | None = None, tracking: TrackingConfig | None = None,
                 publish_score: float = 0.0, first_track_id: int = 1):
        """``class_names[class_id]``: labels for the COCO files' categories, also those never detected.
        ``tracking``: track ids per stream (None or not enabled: none); ``publish_score``: see the
        module docstring."""
        output = output or OutputSection()
        publish.validate("publish")
        output.validate("output")
        self.publish_section, self.output, self.class_names = publish, output, class_names
        self.tracking = tracking if tracking is not None and tracking.enabled else None
        if self.tracking is not None:
            self.tracking.validate("tracking")
        self.publish_score, self.first_track_id = publish_score, first_track_id
        if output.dir:
            _make_out_dir(output.dir)
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
        config = self.publish_section
        self._socket.sndhwm = config.hwm
        self._socket.linger = config.linger_ms
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

    def publish(self, record: FrameRecord) -> None:
        """Takes a record in any order; sends every record whose earlier seqs are all out."""
        arrived = time.perf_counter()
        self._check_open()
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

    def publish_many(self, records: list[FrameRecord]) -> None:
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

    def _stream(self, stream_id: str, source_fps: float | None = None) -> _Stream:
        """The state of ``stream_id``, opening its file sinks on first sight."""
        if stream_id not in self._streams:
            check_stream_id(stream_id)
            sinks = None
            if self.output.dir:
                overlay_fps = (self.output.overlay_fps or source_fps or FALLBACK_FPS) if self.output.overlay else None
                sinks = StreamSinks(self.output.dir, stream_id, self.class_names, overlay_fps,
                                    tracks=self.tracking is not None)
            tracking = (TrackingStage(self.tracking, self.publish_score, self.first_track_id)
                        if self.tracking is not None else None)
            self._streams[stream_id] = _Stream(stream_id, sinks, tracking)
        return self._streams[stream_id]

    def _send_in_order(self, stream: _Stream) -> None:
        while stream.next_seq in stream.waiting:
            self._send_frame(stream, *stream.waiting.pop(stream.next_seq))
        if stream.frames is not None and stream.next_seq >= stream.frames and not stream.ended:
            self._send_eos(stream)

    def _send_frame(self, stream: _Stream, record: FrameRecord, arrived: float) -> None:
        if stream.tracking is not None:
            record = stream.tracking.apply(record)
        config = self.publish_section
        images = config.images == "jpeg"
        pixels = _pixels(record) if images or (stream.sinks is not None and stream.sinks.wants_pixels) else None
        image = None
        if images and pixels is not None:  # a record published without pixels goes without
            image = encode_jpeg(pixels, config.jpeg_quality, config.image_max_side)
        sent = replace(record, published_at=time.time(), encoded_image=image,
                       timing_ms={**record.timing_ms, "publish": (time.perf_counter() - arrived) * 1e3})
        self._socket.send_multipart(encode_message(sent))
        stream.next_seq = int(sent.seq) + 1
        stream.dropped_before += sent.dropped_before
        stream.add_latencies(sent)
        if stream.sinks is not None:
            stream.sinks.write(sent, pixels)

    def _send_eos(self, stream: _Stream) -> None:
        # Files first: a consumer that sees EOS may read them at once.
        if stream.sinks is not None:
            stream.sinks.close()
        ended = stream.tracking.finish() if stream.tracking is not None else None
        self._socket.send_multipart(encode_message(EndOfStream(stream.stream_id, stream.next_seq, ended)))
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


def _pixels(record: FrameRecord) -> np.ndarray | None:
    """The frame's pixels from the object store, if the record refers to them."""
    return fetch_frames([record.pixels])[0] if record.pixels is not None else None


PublisherActor = ray.remote(num_cpus=0)(Publisher)

"""``maskstream consume ENDPOINT``: print, record or render a publisher's frames.

Prints a line per frame, a line per gap (frames it never received, see pipeline.consumer.Gap)
and a line per end of stream saying why it ended; at the end, on stderr, how many duplicate and
malformed messages were passed over. Exits 0 once every expected stream has ended normally, 1 on
a timeout or a stream that ended with an error, 2 on bad input (one line), 130 on Ctrl-C or
SIGTERM (its files closed whole).

With tracking, each instance is shown with its ``#track_id``, and a stream's end line says how
many tracks started (distinct ids seen) and ended (``tracks_ended`` of its frames and its EOS).
With zones, each frame's line ends with its regions' counts and its lines' crossings so far.
"""
import argparse
import contextlib
import logging
import sys
import time

from models.errors import command, on_signals

from .consumer import Consumer, Gap, gap_log
from .overlay import caption
from .protocol import EndOfStream, FrameRecord
from .sinks import JsonlSink, OverlayVideoSink
from .zones import zone_figures

MAX_LABELS_SHOWN = 5  # per line; the rest is counted


def describe(frame: FrameRecord) -> str:
    """One line per frame: ids, timing, the best few instances, and with zones their counts."""
    age_ms = (time.time() - frame.captured_at) * 1e3
    labels = ", ".join(caption(inst) for inst in frame.instances[:MAX_LABELS_SHOWN])
    more = len(frame.instances) - MAX_LABELS_SHOWN
    return (f"{frame.stream} seq={frame.seq} frame={frame.frame_index} pts={frame.pts:.3f} "
            f"dropped_before={frame.dropped_before} age_ms={age_ms:.1f} "
            f"instances={len(frame.instances)}" + (f": {labels}" if labels else "")
            + (f", +{more} more" if more > 0 else "") + "".join(f" | {name}: {text}" for name, text in zone_figures(frame).items()))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="maskstream consume",
        description="Subscribe to a maskstream publisher: print a line per frame, record JSON lines, "
                    "or render an overlay video. Ends when every expected stream has sent EOS.")
    parser.add_argument("endpoint", help="publisher endpoint, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--stream", action="append", metavar="ID",
                        help="only this stream (repeatable); default: every stream, ending once "
                             "all streams seen have ended")
    parser.add_argument("--jsonl", metavar="FILE",
                        help="write each frame's header, as received, as one JSON line")
    parser.add_argument("--video", metavar="FILE",
                        help="render masks, boxes, labels and scores into FILE (.mp4 or .avi) on the "
                             "frame's picture when the publisher sends images (publish.images: jpeg), "
                             "else on a black canvas of the frame size; needs exactly one --stream")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate of --video (default 25)")
    parser.add_argument("--curve-keys", metavar="DIR",
                        help="consumer key directory for an encrypted publisher (see maskstream keys)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="give up after this long without a message (default: wait on)")
    args = parser.parse_args(argv)
    if args.video and len(args.stream or []) != 1:
        parser.error("--video renders one stream: name it with exactly one --stream")
    return args


class Interrupts:
    """Ctrl-C and SIGTERM (docker stop, systemd) end the command between messages, never in the
    middle of one: while it waits for a message they interrupt at once; while it prints and
    records one they are held until that message is in every file. So the files stay whole (an
    overlay video killed unclosed does not play) and hold the same frames. `handle` answers the
    signals (see models.errors.on_signals)."""

    def __init__(self):
        self.waiting, self.requested = True, False

    def handle(self, signum, frame) -> None:
        if self.waiting:
            raise KeyboardInterrupt
        self.requested = True


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    gap_log.setLevel(logging.ERROR)  # printed below, in their place among the frames
    with contextlib.ExitStack() as closing:
        consumer = closing.enter_context(Consumer(args.endpoint, args.stream, args.curve_keys, args.timeout))
        jsonl = closing.enter_context(contextlib.closing(JsonlSink(args.jsonl))) if args.jsonl else None
        video = (closing.enter_context(contextlib.closing(OverlayVideoSink(args.video, args.fps)))
                 if args.video else None)
        try:
            interrupts = Interrupts()
            with on_signals(interrupts.handle):
                consume(consumer, jsonl, video, interrupts)
        except KeyboardInterrupt:
            return 130
    passed_over = [f"{count} {what}" for count, what in ((consumer.duplicates, "duplicate message(s) dropped"),
                                                         (consumer.malformed, "malformed message(s) skipped")) if count]
    if passed_over:
        print(f"{args.endpoint}: " + "; ".join(passed_over), file=sys.stderr)
    if not consumer.finished:
        open_streams = sorted((consumer.streams or consumer.seen) - set(consumer.ended))
        print(f"error: {args.endpoint}: no message for {args.timeout} s; streams not ended: "
              f"{', '.join(open_streams) or 'none seen'}", file=sys.stderr)
        return 1
    return 1 if any(eos.reason == "error" for eos in consumer.ended.values()) else 0


class TrackCounts:
    """Per stream: the track ids seen and the tracks ended so far (tracking on: frames carry them)."""

    def __init__(self):
        self.started: dict[str, set[int]] = {}
        self.ended: dict[str, set[int]] = {}

    def add(self, message: FrameRecord | EndOfStream) -> None:
        if message.tracks_ended is None:
            return
        self.ended.setdefault(message.stream, set()).update(message.tracks_ended)
        started = self.started.setdefault(message.stream, set())
        if isinstance(message, FrameRecord):
            started.update(inst.track_id for inst in message.instances if inst.track_id)

    def summary(self, stream: str) -> str:
        """'; tracks: S started, E ended', or '' for a stream without tracking."""
        if stream not in self.ended:
            return ""
        return f"; tracks: {len(self.started[stream])} started, {len(self.ended[stream])} ended"


def consume(consumer: Consumer, jsonl: JsonlSink | None, video: OverlayVideoSink | None,
            interrupts: Interrupts | None = None) -> None:
    """Prints a line per message and feeds the sinks until the consumer is done; an interrupt
    (KeyboardInterrupt) comes only between messages (see Interrupts)."""
    interrupts = interrupts or Interrupts()
    tracks = TrackCounts()
    messages = consumer.messages()
    while True:
        if interrupts.requested:    # held while the last message was printed and recorded
            raise KeyboardInterrupt
        interrupts.waiting = True
        message = next(messages, None)
        interrupts.waiting = False
        if message is None:
            return
        if isinstance(message, Gap):
            print(message.describe(), flush=True)
            continue
        tracks.add(message)
        if isinstance(message, EndOfStream):
            print(message.describe() + tracks.summary(message.stream), flush=True)
            continue
        if jsonl:
            jsonl.write(message)
        if video:
            video.write(message, message.image)
        print(describe(message), flush=True)


if __name__ == "__main__":
    sys.exit(main())
